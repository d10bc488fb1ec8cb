"""The commands about the agent itself: ``init``, ``run``, ``status``, ``reload``, ``demo``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from agent.cli.common import (
    LiveHelpOption,
    choose_config,
    config_option,
    echo_json,
    host_port_option,
    json_option,
    load_or_none,
    no_data_output,
    own_config_option,
    public_keys_option,
    setup_logging,
    shown_data_dir,
    timeout_option,
)
from agent.config import Config, config_target, default_config_path, default_data_dir
from agent.identity.keys import KeyKind

__all__ = ["demo", "init", "local_host_id", "reload", "run", "status"]

# --- init ----------------------------------------------------------------------------------


@click.command()
@own_config_option
@click.option(
    "--data-dir",
    cls=LiveHelpOption,
    live_help=lambda: f"Where keys and state live (default: {shown_data_dir()}).",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
)
@click.option(
    "--profile",
    default="auto",
    show_default=True,
    help="Board profile name, or 'auto' to detect it at start-up.",
)
@click.option("--lattice", default="default", show_default=True, help="Lattice name.")
@click.option(
    "--name", "friendly_name", default="lattice-edge", show_default=True, help="Friendly host name."
)
@click.option(
    "--listen",
    callback=host_port_option,
    default=None,
    help="Local NATS listener, HOST:PORT (default 127.0.0.1:4222).",
)
@click.option(
    "--monitor",
    callback=host_port_option,
    default=None,
    help="Leaf monitoring listener, HOST:PORT (default 127.0.0.1:8222).",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    help="Cloud leafnode URL (nats-leaf://, tls://, ws(s)://); repeatable.",
)
@click.option(
    "--upstream-creds",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=".creds file for the upstream link (copied, mode 0600).",
)
@click.option(
    "--upstream-tls-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CA certificate (PEM) that signed the hub's TLS certificate, for private hubs.",
)
@click.option(
    "--trust-issuer",
    "trust_issuers",
    multiple=True,
    callback=public_keys_option(KeyKind.ACCOUNT),
    help="Account key whose actors run here; repeatable.",
)
@click.option(
    "--cluster-issuer",
    "cluster_issuers",
    multiple=True,
    callback=public_keys_option(KeyKind.CLUSTER),
    help="Cluster key whose invocations are accepted; repeatable.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config (keys are kept).")
@json_option
def init(
    config_path: Path | None,
    data_dir: Path | None,
    profile: str,
    lattice: str,
    friendly_name: str,
    listen: str | None,
    monitor: str | None,
    upstreams: tuple[str, ...],
    upstream_creds: Path | None,
    upstream_tls_ca: Path | None,
    trust_issuers: list[str],
    cluster_issuers: list[str],
    force: bool,
    as_json: bool,
) -> None:
    """Write the config and host keys, and say what to do next.

    Prints the host's public key (its id on the lattice). Running it again with the same
    answers changes nothing; other answers need --force, which rewrites the config and
    keeps the keys.

    \b
    Examples:
      lattice-edge init --trust-issuer ACCOUNT_KEY
      lattice-edge init --config ./agent.toml --data-dir ./data --json

    \b
    JSON keys: config, host_id, result, next_steps
    """
    from agent.provision import InitRequest, initialise

    target = config_target(config_path)
    result = initialise(
        InitRequest(
            config_path=target,
            data_dir=data_dir or default_data_dir(),
            profile=profile,
            lattice=lattice,
            name=friendly_name,
            listen=listen,
            monitor=monitor,
            upstreams=upstreams,
            upstream_creds=upstream_creds,
            upstream_tls_ca=upstream_tls_ca,
            trusted_issuers=tuple(trust_issuers),
            cluster_issuers=tuple(cluster_issuers),
        ),
        force=force,
    )
    steps = _next_steps(target, trusted=bool(trust_issuers))
    if as_json:
        echo_json(
            {
                "config": str(result.config_path),
                "host_id": result.host_id,
                "result": result.message,
                "next_steps": [{"command": c, "why": why} for c, why in steps],
            }
        )
        return
    click.echo(f"{result.message}: {result.config_path}", err=True)
    click.echo(result.host_id)
    click.echo("next:", err=True)
    width = max(len(command) for command, _ in steps)
    for command, why in steps:
        click.echo(f"  {command:{width}}   # {why}", err=True)


def _next_steps(config: Path, *, trusted: bool) -> list[tuple[str, str]]:
    named = "" if config == default_config_path() else f" --config {config}"
    steps = []
    if not trusted:
        steps.append(
            (f"lattice-edge trust add ACCOUNT_KEY{named}", "trust the account that signs actors")
        )
    steps.append((f"lattice-edge run{named}", "start the agent (or: systemctl start lattice-edge)"))
    steps.append((f"lattice-edge status{named}", "check that it is up"))
    return steps


# --- run -----------------------------------------------------------------------------------


@no_data_output("runs the agent in the foreground; its log is the output")
@click.command()
@own_config_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or as JSON objects (default: the config's log.format).",
)
def run(config_path: Path | None, log_format: str | None) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT.

    SIGHUP reloads the config (see 'lattice-edge reload'). Without any config file the
    agent runs on an embedded default with the demo actor.

    \b
    Examples:
      lattice-edge run
      lattice-edge run --config /etc/lattice-edge/agent.toml --log-format json
    """
    from agent.config import embedded_default
    from agent.host import HostInfo
    from agent.launch import prepare_host

    config = load_or_none(config_path)
    embedded = config is None
    if config is None:
        config = embedded_default()
    setup_logging(config.log_level, log_format or config.log_format, config)
    host = prepare_host(config, create_keys=embedded, demo=embedded)

    def announce(info: HostInfo) -> None:
        logs = (
            f"journal of {info.systemd_unit}"
            if info.systemd_unit
            else info.log_file or "this terminal (set [log] file to keep them)"
        )
        lines = [
            f"Lattice Edge host {info.host_id} is ready",
            f"  local lattice : {info.client_url}  (lattice '{info.lattice}')",
            f"  monitoring    : {info.monitor_url}",
            f"  profile       : {info.profile}",
            f"  nats-server   : {info.nats_server_version} ({info.nats_server})",
            f"  upstream      : {', '.join(info.upstream) or 'none (standalone)'}",
            f"  logs          : {logs}",
        ]
        if host.demo_greeting is not None:
            lines.append(f"  demo actor    : Greet -> {host.demo_greeting!r}")
        if embedded:
            lines.append(f"  embedded default config; data in {info.data_dir}")
            lines.append("  try: lattice-edge status   (Ctrl-C stops)")
        click.echo("\n".join(lines))

    asyncio.run(host.run(on_ready=announce))


# --- status --------------------------------------------------------------------------------


@click.command()
@config_option
@timeout_option(5.0, "for each answer of the agent")
@json_option
def status(config_path: Path | None, timeout: float, as_json: bool) -> None:
    """Show whether the agent, its leaf and its uplink are up.

    Exits 3 when the agent is not running (as 'systemctl status' does).

    \b
    Examples:
      lattice-edge status
      lattice-edge status --json

    \b
    JSON keys: agent, leaf, upstream, actors, health, credentials, profile, device, config, logs
    """
    from agent.boards import resolve_board
    from agent.report import format_status
    from agent.status import gather_status

    choice = choose_config(config_path)
    config: Config = choice.config
    report = asyncio.run(gather_status(config, resolve_board(config).profile.name, timeout=timeout))
    report["config"] = {
        "path": str(choice.path) if choice.path else None,
        "origin": choice.origin,
    }
    report["logs"] = _where_logs_go(config, report["agent"]["up"])
    if as_json:
        echo_json(report)
    else:
        click.echo(format_status(report))
        click.echo(f"config   : {choice.describe()}")
        click.echo(f"logs     : {report['logs'] or 'stderr of the terminal that runs it'}")
        if not report["agent"]["up"]:
            named = f" --config {choice.path}" if choice.path else ""
            click.echo(f"hint     : start it with 'lattice-edge run{named}'")
    if not report["agent"]["up"]:
        sys.exit(3)


def _where_logs_go(config: Config, up: bool) -> str | None:
    """What 'lattice-edge logs' would read, in words (None: only the agent's stderr)."""
    from agent.errors import AgentStateError
    from agent.logview import log_source
    from agent.running import RUN_FILE, read_run_file

    info = read_run_file(config.run_dir / RUN_FILE) if up else None
    try:
        return log_source(config, info, journal_has=lambda _unit: False).describe()
    except AgentStateError:
        return None


# --- reload --------------------------------------------------------------------------------


@click.command()
@config_option
@timeout_option(10.0, "for the agent's answer")
@json_option
def reload(config_path: Path | None, timeout: float, as_json: bool) -> None:
    """Reload the running agent's config; say what changed.

    Trusted issuers, cluster issuers, labels and the log level apply at once; other keys
    are listed as needing a restart. A config that does not load changes nothing. SIGHUP
    does the same (its report goes to the agent's log).

    \b
    Examples:
      lattice-edge reload
      lattice-edge reload --json

    \b
    JSON keys: config, changed, restart_needed
    """
    choice = choose_config(config_path)
    report = reload_agent(choice.config, timeout)
    if as_json:
        echo_json(report)
        return
    click.echo(format_reload(report))


def reload_agent(config: Config, timeout: float) -> dict[str, Any]:
    """Ask the agent of ``config`` to reload; its report (raises when it refuses)."""
    from agent.errors import ConfigError
    from agent.lattice import subjects
    from agent.lattice.client import connect_local

    host_id = local_host_id(config)

    async def ask() -> Any:
        async with connect_local(config, connect_timeout=min(timeout, 3.0)) as client:
            return await client.request(
                subjects.agent_reload(host_id), timeout=timeout, what="the reload request"
            )

    reply = asyncio.run(ask())
    if not isinstance(reply, dict):
        raise ConfigError(f"the agent answered the reload with {reply!r}")
    if not reply.get("ok"):
        raise ConfigError(f"the agent kept its config: {reply.get('error')}")
    return {key: reply.get(key) for key in ("config", "changed", "restart_needed")}


def format_reload(report: dict[str, Any]) -> str:
    """The human-readable reload report."""
    lines = [f"reloaded {report.get('config') or 'the embedded default config'}"]
    for change in report.get("changed") or []:
        lines.append(f"  applied       : {change['key']}: {_short(change['old'])} -> "
                     f"{_short(change['new'])}")  # fmt: skip
    for change in report.get("restart_needed") or []:
        lines.append(f"  needs restart : {change['key']}: {_short(change['old'])} -> "
                     f"{_short(change['new'])}")  # fmt: skip
    if len(lines) == 1:
        lines.append("  nothing changed")
    return "\n".join(lines)


def _short(value: Any) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


def local_host_id(config: Config) -> str:
    """The id of the host on this device: its run file's, else its key's."""
    from agent.identity.host import load_host_keys
    from agent.running import RUN_FILE, read_run_file

    info = read_run_file(config.run_dir / RUN_FILE)
    if info is not None and isinstance(info.get("host_id"), str):
        return str(info["host_id"])
    return load_host_keys(config.keys_dir).host_id


# --- demo ----------------------------------------------------------------------------------


@no_data_output("tells a story on the terminal")
@click.command()
def demo() -> None:
    """Run the tour: a host, an actor, a call, a stop.

    Starts a host of its own (temporary data directory, free ports), pings it, starts and
    invokes the demo actor and stops it, all through the lattice.

    \b
    Examples:
      lattice-edge demo
    """
    from agent.demo import run_demo

    setup_logging("warning")
    asyncio.run(run_demo(click.echo))
