"""``lattice-edge actor start|stop|list|invoke``: the running host's actors, driven through
its lattice control interface exactly as a cloud operator would (``wash ctl``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.cli.actor import actor, payload_options, read_module, write_response
from agent.cli.common import (
    choose_config,
    config_option,
    decode_response,
    echo_json,
    json_option,
    read_payload,
    timeout_option,
)
from agent.cli.service import local_host_id
from agent.config import Config
from agent.errors import LatticeEdgeError

if TYPE_CHECKING:
    from agent.lattice.client import LatticeClient

__all__ = ["actor_invoke", "actor_list", "actor_start", "actor_stop"]

T = TypeVar("T")
_HOST_SCHEMES = ("nats-os://", "sha256:")


@actor.command("start")
@click.argument("actor_ref", metavar="PATH|REF")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many instances to start.")  # fmt: skip
@config_option
@timeout_option(60.0, "for the actor to start")
@json_option
def actor_start(
    actor_ref: str, count: int, config_path: Path | None, timeout: float, as_json: bool
) -> None:
    """Start an actor on the running host; print its key.

    \b
    PATH|REF is one of:
      ./echo.wasm, echo.wasm, /abs/echo.wasm, file:///abs/echo.wasm
                  a module file here; the CLI reads it with your rights and uploads it to
                  the host's own object store (the agent reads no path you name)
      nats-os://BUCKET/OBJECT[?domain=D]
                  a module in a JetStream object store the host fetches itself (D: the
                  JetStream domain that holds the bucket, e.g. the hub's)
      sha256:DIGEST
                  a module already in the host's module cache

    \b
    Examples:
      lattice-edge actor start ./echo.wasm
      lattice-edge actor start ./echo.wasm --count 2 --json

    \b
    JSON keys: public_key, host_id, image_ref, instances, name
    """
    config, host_id = _local_host(config_path)

    async def start(client: LatticeClient) -> dict[str, Any]:
        if actor_ref.startswith(_HOST_SCHEMES):
            reference = actor_ref
        else:
            path = Path(actor_ref.removeprefix("file://"))
            reference = await client.upload_module(read_module(path))
        try:
            return await client.start_actor(host_id, reference, count, timeout=timeout)
        except LatticeEdgeError as exc:
            if reference == actor_ref:
                raise
            # Speak of the file the user named, not of the upload it became.
            raise LatticeEdgeError(str(exc).replace(reference, actor_ref)) from exc

    started = _on_lattice(config, timeout, start)
    if as_json:
        echo_json(
            {
                "public_key": started.get("public_key"),
                "host_id": host_id,
                "image_ref": started.get("image_ref"),
                "instances": count,
                "name": (started.get("claims") or {}).get("name") or started.get("name"),
            }
        )
        return
    click.echo(started["public_key"])


@actor.command("stop")
@click.argument("actor_key")
@config_option
@timeout_option(30.0, "for the actor to stop")
@json_option
def actor_stop(actor_key: str, config_path: Path | None, timeout: float, as_json: bool) -> None:
    """Stop every instance of an actor on the running host.

    Fails at once when the host does not run ACTOR_KEY (its module key, M…, or the
    reference it was started from).

    \b
    Examples:
      lattice-edge actor stop ACTOR_KEY
      lattice-edge actor stop ACTOR_KEY --json

    \b
    JSON keys: actor, host_id, stopped_instances
    """
    config, host_id = _local_host(config_path)
    stopped = _on_lattice(
        config, timeout, lambda client: client.stop_actor(host_id, actor_key, timeout=timeout)
    )
    if as_json:
        echo_json({"actor": actor_key, "host_id": host_id, "stopped_instances": stopped})
        return
    click.echo(f"stopped {actor_key} ({stopped} instance{'s' * (stopped != 1)})", err=True)


@actor.command("list")
@config_option
@timeout_option(5.0, "for the inventory")
@json_option
def actor_list(config_path: Path | None, timeout: float, as_json: bool) -> None:
    """List the actors the running host runs.

    This is the host's lattice inventory (what 'wash get inventory' shows).

    \b
    Examples:
      lattice-edge actor list
      lattice-edge actor list --json

    \b
    JSON keys: host_id, issuer, labels, friendly_name, version, uptime_seconds,
      uptime_human, actors, providers
    """
    config, host_id = _local_host(config_path)
    inventory = _on_lattice(
        config, timeout, lambda client: client.inventory(host_id, timeout=timeout)
    )
    if as_json:
        echo_json(inventory)
        return
    actors = inventory.get("actors", [])
    if not actors:
        click.echo("no actors running")
    for entry in actors:
        instances = entry.get("instances", [])
        click.echo(
            f"{entry['id']}  {entry.get('name', '')}  x{len(instances)}  {entry['image_ref']}"
        )


@actor.command("invoke")
@click.argument("actor_key")
@click.argument("operation")
@click.argument("payload", required=False, default="")
@payload_options
@config_option
@timeout_option(5.0, "for the answer")
@json_option
def actor_invoke(
    actor_key: str,
    operation: str,
    payload: str,
    payload_file: Path | None,
    as_base64: bool,
    msgpack: bool,
    config_path: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Invoke a running actor over the lattice.

    The invocation is signed with this host's cluster key, as the host's own calls are.
    PAYLOAD is sent as it is ('-' reads stdin) unless --base64 or --msgpack says how to
    read it; the response goes to stdout as it is.

    \b
    Examples:
      lattice-edge actor invoke ACTOR_KEY Echo hello
      lattice-edge actor invoke ACTOR_KEY Echo '{"a": 1}' --msgpack
      lattice-edge actor invoke ACTOR_KEY Echo hello --json

    \b
    JSON keys: actor, operation, response, response_base64, seconds
    """
    from agent.identity.host import load_host_keys

    config, host_id = _local_host(config_path)
    cluster_key = load_host_keys(config.keys_dir).cluster
    body = read_payload(payload, payload_file, as_base64, msgpack)
    reply = _on_lattice(
        config,
        timeout,
        lambda client: client.invoke(
            actor_key, operation, body, cluster_key=cluster_key, host_id=host_id, timeout=timeout
        ),
    )
    if as_json:
        echo_json(
            {
                "actor": actor_key,
                "operation": operation,
                "response": decode_response(reply.response, msgpack),
                "response_base64": base64.b64encode(reply.response).decode(),
                "seconds": round(reply.seconds, 6),
            }
        )
        return
    write_response(reply.response, msgpack)


def _on_lattice(config: Config, timeout: float, work: Callable[[LatticeClient], Awaitable[T]]) -> T:
    """Run ``work`` with a lattice client on the local host's leaf node."""
    from agent.lattice.client import connect_local

    async def go() -> T:
        async with connect_local(config, connect_timeout=min(timeout, 3.0)) as client:
            return await work(client)

    return asyncio.run(go())


def _local_host(config_path: Path | None) -> tuple[Config, str]:
    """The config of the host on this device and its id."""
    config: Config = choose_config(config_path).config
    return config, local_host_id(config)
