"""``lattice-edge uplink``: the cloud side of store-and-forward (the hub stream)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from agent.forward.uplink import (
    DEFAULT_DUPLICATE_WINDOW_S,
    UPLINK_STREAM,
    UplinkStreamSpec,
    nats_cli_command,
    parse_duration,
)

__all__ = ["uplink"]


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group()
def uplink() -> None:
    """The hub stream that devices forward their outbox into."""


@uplink.command("init")
@click.option("--hub", "hub_url", required=True,
              help="The hub's NATS URL, e.g. tls://connect.ngs.global.")  # fmt: skip
@click.option(
    "--creds",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A .creds file of a user in the fleet's account.",
)
@click.option("--stream", default=UPLINK_STREAM, show_default=True, help="Stream name.")
@click.option(
    "--duplicate-window",
    default=f"{int(DEFAULT_DUPLICATE_WINDOW_S // 3600)}h",
    show_default=True,
    callback=_duration,
    help="How long a resent message is recognised: the longest outage with no duplicates.",
)
@click.option("--max-age", default=None, callback=_duration,
              help="Drop messages older than this (new stream: 0, never).")  # fmt: skip
@click.option("--max-bytes", type=int, default=None,
              help="Size limit; the oldest make room (new stream: -1, none).")  # fmt: skip
@click.option("--replicas", type=click.IntRange(1, 5), default=None,
              help="Replicas in a clustered hub (new stream: 1).")  # fmt: skip
@click.option("--js-domain", default=None, help="The hub's JetStream domain, if it needs one.")
@click.option("--print-command", is_flag=True,
              help="Only print the equivalent `nats stream add` line.")  # fmt: skip
def uplink_init(
    hub_url: str,
    creds: Path | None,
    stream: str,
    duplicate_window: float,
    max_age: float | None,
    max_bytes: int | None,
    replicas: int | None,
    js_domain: str | None,
    print_command: bool,
) -> None:
    """Create (or update) the hub stream on lattice-edge.uplink.>."""
    spec = UplinkStreamSpec(
        name=stream,
        duplicate_window_s=duplicate_window,
        max_age_s=max_age,
        max_bytes=max_bytes,
        replicas=replicas,
    )
    if print_command:
        click.echo(nats_cli_command(spec))
        return
    info = asyncio.run(_init(hub_url, creds, spec, js_domain))
    found = info.get("state")
    state: dict[str, Any] = found if isinstance(found, dict) else {}
    click.echo(
        f"stream {spec.name} captures {spec.subjects[0]}; duplicate window "
        f"{duplicate_window:g} s; holds {state.get('messages', 0)} messages"
    )


async def _init(
    url: str, creds: Path | None, spec: UplinkStreamSpec, domain: str | None
) -> dict[str, Any]:
    from agent.forward.uplink import ensure_uplink_stream
    from agent.lattice.client import connect

    async with connect(url, creds=str(creds) if creds else None) as client:
        return await ensure_uplink_stream(client.nats, spec, domain=domain)
