"""The ``lattice-edge`` command line: a thin click layer over the library.

This package is the only place that imports click. Every command turns its options into
library calls; errors from the library (:class:`agent.errors.LatticeEdgeError`) become one
line on stderr and exit status 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from agent import __version__
from agent.cli.actor import actor
from agent.cli.common import (
    DEBUG,
    config_option,
    host_port_option,
    load_or_none,
    public_keys_option,
    setup_logging,
)
from agent.cli.uplink import uplink
from agent.config import config_target, default_data_dir, embedded_default
from agent.errors import ConfigError, LatticeEdgeError
from agent.identity.keys import KeyKind, generate, write_seed_file

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lattice-edge")
@click.option("--debug", is_flag=True, help="Debug logging and tracebacks on errors.")
def cli(debug: bool) -> None:
    """Lattice Edge: a wasmCloud lattice host for small Linux boards."""
    if debug:
        DEBUG["enabled"] = True


# --- init ------------------------------------------------------------------------------


@cli.command()
@config_option
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where keys and state live (default: {default_data_dir()}).",
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
    help="Account key whose actors run here.",
)
@click.option(
    "--cluster-issuer",
    "cluster_issuers",
    multiple=True,
    callback=public_keys_option(KeyKind.CLUSTER),
    help="Cluster key whose invocations are accepted.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config (keys are kept).")
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
) -> None:
    """Write the config and host keys; print the host's public key."""
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
    click.echo(f"{result.message}: {result.config_path}", err=True)
    click.echo(result.host_id)


# --- run -------------------------------------------------------------------------------


@cli.command()
@config_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text or as JSON objects (default: the config's log.format).",
)
def run(config_path: Path | None, log_format: str | None) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT."""
    from agent.host import HostInfo, prepare_host

    config = load_or_none(config_path)
    embedded = config is None
    if config is None:
        config = embedded_default()
    setup_logging(config.log_level, log_format or config.log_format)
    host = prepare_host(config, create_keys=embedded, demo=embedded)

    def announce(info: HostInfo) -> None:
        lines = [
            f"Lattice Edge host {info.host_id} is ready",
            f"  local lattice : {info.client_url}  (lattice '{info.lattice}')",
            f"  monitoring    : {info.monitor_url}",
            f"  profile       : {info.profile}",
            f"  upstream      : {', '.join(info.upstream) or 'none (standalone)'}",
        ]
        if host.demo_greeting is not None:
            lines.append(f"  demo actor    : Greet -> {host.demo_greeting!r}")
        if embedded:
            lines.append(f"  embedded default config; data in {info.data_dir}")
            lines.append("  try: lattice-edge status   (Ctrl-C stops)")
        click.echo("\n".join(lines))

    asyncio.run(host.run(on_ready=announce))


# --- status ----------------------------------------------------------------------------


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show whether the agent, its leaf and the upstream link are up."""
    from agent.boards import resolve_board
    from agent.report import format_status
    from agent.status import gather_status

    config = load_or_none(config_path) or embedded_default()
    report = asyncio.run(gather_status(config, resolve_board(config).profile.name))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_status(report))
    if not report["agent"]["up"]:
        sys.exit(3)  # like systemctl status: not running


# --- profiles --------------------------------------------------------------------------


@cli.group()
def profiles() -> None:
    """List, show and detect hardware profiles."""


@profiles.command("list")
def profiles_list() -> None:
    """List the shipped profiles."""
    from profiles import available_profiles, load_profile

    for name in available_profiles():
        click.echo(f"{name:16} {load_profile(name).description}")


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Show a profile's match rules and budgets."""
    from dataclasses import asdict

    from agent.errors import ProfileError
    from profiles import ProfileLoadError, load_profile

    try:
        profile = load_profile(name)
    except ProfileLoadError as exc:
        raise ProfileError(str(exc)) from exc
    click.echo(json.dumps(asdict(profile), indent=2))


@profiles.command("detect")
def profiles_detect() -> None:
    """Detect this board's profile and say why."""
    from agent.boards import detect_board

    detection = detect_board()
    click.echo(f"{detection.profile.name}: {detection.reason}")
    click.echo(f"  model={detection.model!r} machine={detection.machine} ram={detection.ram_mb} MB")


# --- keys ------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Generate nkeys."""


@keys.command("generate")
@click.argument("kind", type=click.Choice([k.name.lower() for k in KeyKind]))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Seed file to write (default ./KIND.nk); mode 0600.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing seed file.")
def keys_generate(kind: str, output: Path | None, force: bool) -> None:
    """Write a new seed of KIND (0600) and print its public key."""
    target = output or Path(f"{kind}.nk")
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; pass --force to overwrite it")
    key = generate(KeyKind.from_name(kind))
    write_seed_file(target, key)
    click.echo(key.public_key)


@cli.command()
def demo() -> None:
    """Run the tour: start a host, ping it, start and invoke an actor, stop it."""
    from agent.demo import run_demo

    setup_logging("warning")
    asyncio.run(run_demo(click.echo))


cli.add_command(actor)
cli.add_command(uplink)


# --- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="lattice-edge",
                 standalone_mode=False)  # fmt: skip
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except LatticeEdgeError as exc:
        if DEBUG["enabled"]:
            traceback.print_exc()
        click.echo(f"lattice-edge: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
