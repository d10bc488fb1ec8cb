"""``lattice-edge actor …``: inspect, sign and try out modules, and drive the actors of the
local host through its lattice control interface."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.cli.common import config_option, load_or_none, public_keys_option
from agent.config import Config, embedded_default
from agent.identity.keys import KeyKind

if TYPE_CHECKING:
    from agent.lattice.client import LatticeClient

# --- the group ------------------------------------------------------------------------------


@click.group()
def actor() -> None:
    """Inspect, sign and call WebAssembly actors."""


def _read_module(path: Path) -> bytes:
    from agent.errors import ModuleFormatError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModuleFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _trust(
    config_path: Path | None, extra: Sequence[str], allow_unsigned: bool
) -> tuple[dict[str, Any], int]:
    """Admission's trust keywords (config plus flags) and the page budget."""
    from agent.boards import resolve_board

    config = load_or_none(config_path) or embedded_default()
    trust = {
        "trusted_issuers": tuple(dict.fromkeys([*config.trust.trusted_issuers, *extra])),
        "allow_unsigned": allow_unsigned or config.trust.allow_unsigned,
        "allow_legacy_claims": config.actors.allow_legacy_claims,
        "pinned_digests": config.actors.pinned_modules,
    }
    return trust, resolve_board(config).budgets.actor_memory_pages


trust_options = [
    config_option,
    click.option("--trust-issuer", "trust_issuers", multiple=True,
                 callback=public_keys_option(KeyKind.ACCOUNT),
                 help="Also trust this account key (adds to the config's trusted_issuers)."),
    click.option("--allow-unsigned", is_flag=True, help="Accept modules without claims."),
]  # fmt: skip


def _with_trust_options(command: Any) -> Any:
    for option in reversed(trust_options):
        command = option(command)
    return command


@actor.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_with_trust_options
def actor_inspect(
    file: Path,
    as_json: bool,
    config_path: Path | None,
    trust_issuers: list[str],
    allow_unsigned: bool,
) -> None:
    """Show a module's claims, hash, imports, exports, memory and verdict."""
    from agent.errors import ModuleError
    from agent.report import format_inspect
    from agent.runtime.admission import inspect_report

    trust, pages = _trust(config_path, trust_issuers, allow_unsigned)
    report = inspect_report(_read_module(file), max_pages=pages, **trust)
    click.echo(json.dumps(report, indent=2) if as_json else format_inspect(report))
    verdict = report["verdict"]
    if not verdict["accepted"]:
        raise ModuleError(f"{file}: rejected: {verdict['reason']}")


@actor.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the signed module.",
)
@click.option(
    "--issuer-seed",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Account seed file (SA...) that signs.",
)
@click.option("--name", required=True, help="Actor name.")
@click.option("--cap", "caps", multiple=True, help="Capability contract id; repeatable.")
@click.option("--tag", "tags", multiple=True, help="Tag; repeatable.")
@click.option("--rev", type=int, default=None, help="Revision number.")
@click.option("--ver", default=None, help="Human-readable version.")
@click.option("--call-alias", default=None, help="Call alias.")
@click.option(
    "--module-seed",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Module seed file (SM...); a new module key is made when absent.",
)
@click.option(
    "--expires",
    "expires_days",
    type=click.IntRange(min=1),
    default=None,
    help="Days until the claims expire.",
)
def actor_sign(
    file: Path,
    output: Path,
    issuer_seed: Path,
    name: str,
    caps: tuple[str, ...],
    tags: tuple[str, ...],
    rev: int | None,
    ver: str | None,
    call_alias: str | None,
    module_seed: Path | None,
    expires_days: int | None,
) -> None:
    """Embed wascap claims signed by an issuer account; print the module's key."""
    from agent.fsutil import write_atomic
    from agent.identity.keys import load_seed_file
    from agent.identity.wascap import sign_module

    issuer = load_seed_file(issuer_seed, KeyKind.ACCOUNT)
    module_key = load_seed_file(module_seed, KeyKind.MODULE) if module_seed else None
    signed, claims = sign_module(
        _read_module(file), issuer, name, caps=caps, tags=tags, rev=rev, ver=ver,
        call_alias=call_alias, module_key=module_key, expires_in_days=expires_days,
    )  # fmt: skip
    write_atomic(output, signed)
    click.echo(claims.subject)


@actor.command("call")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("operation")
@click.argument("payload", required=False, default="")
@_with_trust_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Invocation deadline in seconds (default: the profile's).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the response (base64), host calls and log lines as JSON.",
)
def actor_call(
    file: Path,
    operation: str,
    payload: str,
    config_path: Path | None,
    trust_issuers: list[str],
    allow_unsigned: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Load FILE in a sandbox and invoke OPERATION once with PAYLOAD ('-' reads stdin)."""
    import base64

    from agent.boards import resolve_board
    from agent.runtime.oneshot import call_module

    config = load_or_none(config_path) or embedded_default()
    trust, _ = _trust(config_path, trust_issuers, allow_unsigned)
    body = sys.stdin.buffer.read() if payload == "-" else payload.encode()
    outcome = asyncio.run(
        call_module(
            _read_module(file), operation, body, budgets=resolve_board(config).budgets,
            timeout=timeout, **trust,
        )
    )  # fmt: skip
    result = outcome.result
    if as_json:
        report = {
            "actor": outcome.module.actor_id,
            "operation": operation,
            "response_base64": base64.b64encode(result.response).decode(),
            "host_calls": [
                {"binding": c.binding, "namespace": c.namespace, "operation": c.operation,
                 "payload_base64": base64.b64encode(c.payload).decode(), "error": c.error}
                for c in result.host_calls
            ],
            "console": list(result.console),
        }  # fmt: skip
        click.echo(json.dumps(report, indent=2))
        return
    for line in result.console:
        click.echo(f"[actor] {line}", err=True)
    sys.stdout.buffer.write(result.response)
    sys.stdout.buffer.flush()


@actor.command("start")
@click.argument("actor_ref")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True)
@config_option
def actor_start(actor_ref: str, count: int, config_path: Path | None) -> None:
    """Start an actor on the local host through the lattice; print its key.

    ACTOR_REF is a module file (a path, relative or absolute, or file:///path), which is
    uploaded to the host's own object store first, or a reference the host fetches itself:
    nats-os://BUCKET/OBJECT[?domain=D] or sha256:DIGEST (a module in its cache).
    """
    config, host_id = _local_host(config_path)

    async def start(client: LatticeClient) -> dict[str, Any]:
        if actor_ref.startswith(("nats-os://", "sha256:")):
            reference = actor_ref
        else:
            # The agent reads no file a caller names outside its roots; the CLI reads it
            # with the user's own rights and hands the agent the bytes.
            path = Path(actor_ref.removeprefix("file://"))
            reference = await client.upload_module(_read_module(path))
        return await client.start_actor(host_id, reference, count)

    started = _on_lattice(config, start)
    click.echo(started["public_key"])


@actor.command("stop")
@click.argument("actor_key")
@config_option
def actor_stop(actor_key: str, config_path: Path | None) -> None:
    """Stop every instance of an actor on the local host."""
    config, host_id = _local_host(config_path)
    _on_lattice(config, lambda client: client.stop_actor(host_id, actor_key))
    click.echo(f"stopped {actor_key}", err=True)


@actor.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the host inventory as JSON.")
@config_option
def actor_list(as_json: bool, config_path: Path | None) -> None:
    """List the actors the local host runs (its lattice inventory)."""
    config, host_id = _local_host(config_path)
    inventory = _on_lattice(config, lambda client: client.inventory(host_id))
    if as_json:
        click.echo(json.dumps(inventory, indent=2))
        return
    for entry in inventory.get("actors", []):
        instances = entry.get("instances", [])
        click.echo(
            f"{entry['id']}  {entry.get('name', '')}  x{len(instances)}  {entry['image_ref']}"
        )


@actor.command("invoke")
@click.argument("actor_key")
@click.argument("operation")
@click.argument("payload", required=False, default="")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=5.0, show_default=True)
@config_option
def actor_invoke(
    actor_key: str, operation: str, payload: str, timeout: float, config_path: Path | None
) -> None:
    """Invoke a running actor over the lattice (signed with this host's cluster key)."""
    from agent.identity.host import load_host_keys

    config, host_id = _local_host(config_path)
    cluster_key = load_host_keys(config.keys_dir).cluster
    body = sys.stdin.buffer.read() if payload == "-" else payload.encode()
    reply = _on_lattice(
        config,
        lambda client: client.invoke(
            actor_key, operation, body, cluster_key=cluster_key, host_id=host_id, timeout=timeout
        ),
    )
    sys.stdout.buffer.write(reply.response)
    sys.stdout.buffer.flush()


T = TypeVar("T")


def _on_lattice(config: Config, work: Callable[[LatticeClient], Awaitable[T]]) -> T:
    """Run ``work`` with a lattice client on the local host's leaf node."""
    from agent.lattice.client import connect_local

    async def go() -> T:
        async with connect_local(config) as client:
            return await work(client)

    return asyncio.run(go())


def _local_host(config_path: Path | None) -> tuple[Config, str]:
    """The config of the host on this device and its id."""
    from agent.identity.host import load_host_keys

    config = load_or_none(config_path) or embedded_default()
    return config, load_host_keys(config.keys_dir).host_id
