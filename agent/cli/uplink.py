"""``lattice-edge fleet uplink``: the cloud side of store-and-forward (the hub stream)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from agent.cli.fleet import dir_option
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
    """Manage the hub stream that devices forward into."""


@uplink.command("init")
@dir_option
@click.option("--hub", "hub_url", default=None,
              help="The hub's NATS URL (default: the fleet directory's first hub).")  # fmt: skip
@click.option(
    "--creds",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A .creds file of a user in the fleet's account (default: the fleet's own).",
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
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def uplink_init(
    fleet_dir: Path | None,
    hub_url: str | None,
    creds: Path | None,
    stream: str,
    duplicate_window: float,
    max_age: float | None,
    max_bytes: int | None,
    replicas: int | None,
    js_domain: str | None,
    print_command: bool,
    as_json: bool,
) -> None:
    """Create or update the hub stream that devices forward into.

    The stream captures lattice-edge.uplink.> with a duplicate window that covers what a
    device may resend after an outage.

    With no --hub, the fleet directory (--dir) says where the hub is and how to log in.

    \b
    Examples:
      lattice-edge fleet uplink init --dir ./fleet --json
      lattice-edge fleet uplink init --hub nats://hub:4222 --print-command

    \b
    JSON keys: stream, subjects, duplicate_window_s, messages, command
    """
    spec = UplinkStreamSpec(
        name=stream,
        duplicate_window_s=duplicate_window,
        max_age_s=max_age,
        max_bytes=max_bytes,
        replicas=replicas,
    )
    report: dict[str, Any] = {
        "stream": spec.name,
        "subjects": list(spec.subjects),
        "duplicate_window_s": duplicate_window,
        "messages": None,
        "command": nats_cli_command(spec),
    }
    if not print_command:
        if hub_url is None:
            from agent.fleet.fleetdir import default_fleet_dir, load_fleet

            fleet = load_fleet(fleet_dir or default_fleet_dir())
            hub_url, creds = fleet.hub_urls[0], creds or fleet.creds
            js_domain = js_domain or fleet.js_domain
        info = asyncio.run(_init(hub_url, creds, spec, js_domain))
        found = info.get("state")
        state: dict[str, Any] = found if isinstance(found, dict) else {}
        report["messages"] = state.get("messages", 0)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif print_command:
        click.echo(report["command"])
    else:
        click.echo(
            f"stream {spec.name} captures {spec.subjects[0]}; duplicate window "
            f"{duplicate_window:g} s; holds {report['messages']} messages"
        )


async def _init(
    url: str, creds: Path | None, spec: UplinkStreamSpec, domain: str | None
) -> dict[str, Any]:
    from agent.forward.uplink import ensure_uplink_stream
    from agent.lattice.client import connect

    async with connect(url, creds=str(creds) if creds else None) as client:
        return await ensure_uplink_stream(client.nats, spec, domain=domain)
