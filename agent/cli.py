"""The ``lattice-edge`` command line: a thin click layer over the library.

This is the only module that imports click. Every command turns its options into library
calls; errors from the library (:class:`agent.errors.LatticeEdgeError`) become one line
on stderr and exit status 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from agent import __version__
from agent.config import (
    CONFIG_ENV,
    Config,
    HostPort,
    default_config_path,
    default_data_dir,
    embedded_default,
    load_config,
    locate_config,
)
from agent.errors import ConfigError, LatticeEdgeError
from agent.identity.keys import KeyKind, generate, is_public_key, write_seed_file

if TYPE_CHECKING:
    from agent.lattice.client import LatticeClient

_debug = {"enabled": bool(os.environ.get("LATTICE_EDGE_DEBUG"))}
logger = logging.getLogger("lattice_edge.cli")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Config file (default: ${CONFIG_ENV}, then {default_config_path()}).",
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.DEBUG if _debug["enabled"] else getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(config_path: Path | None) -> Config | None:
    located = locate_config(config_path)
    return load_config(located) if located is not None else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lattice-edge")
@click.option("--debug", is_flag=True, help="Debug logging and tracebacks on errors.")
def cli(debug: bool) -> None:
    """Lattice Edge: a wasmCloud lattice host for small Linux boards."""
    if debug:
        _debug["enabled"] = True


# --- init ------------------------------------------------------------------------------


def _host_port(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(HostPort.parse(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _public_keys(kind: KeyKind) -> Any:
    def check(_ctx: click.Context, _param: click.Parameter, values: Sequence[str]) -> list[str]:
        for value in values:
            if not is_public_key(value, kind):
                raise click.BadParameter(f"'{value}' is not a public {kind.name.lower()} key")
        return list(values)

    return check


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
    callback=_host_port,
    default=None,
    help="Local NATS listener, HOST:PORT (default 127.0.0.1:4222).",
)
@click.option(
    "--monitor",
    callback=_host_port,
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
    "--trust-issuer",
    "trust_issuers",
    multiple=True,
    callback=_public_keys(KeyKind.ACCOUNT),
    help="Account key whose actors run here.",
)
@click.option(
    "--cluster-issuer",
    "cluster_issuers",
    multiple=True,
    callback=_public_keys(KeyKind.CLUSTER),
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
    trust_issuers: list[str],
    cluster_issuers: list[str],
    force: bool,
) -> None:
    """Write the config and host keys; print the host's public key."""
    from agent.provision import InitRequest, initialise

    target = config_path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV)
                             else default_config_path())  # fmt: skip
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
def run(config_path: Path | None) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT."""
    from agent.host import HostInfo, prepare_host

    config = _load(config_path)
    embedded = config is None
    if config is None:
        config = embedded_default()
    _setup_logging(config.log_level)
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
    from agent.status import gather_status

    config = _load(config_path) or embedded_default()
    report = asyncio.run(gather_status(config, resolve_board(config).profile.name))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(_format_status(report))
    if not report["agent"]["up"]:
        sys.exit(3)  # like systemctl status: not running


def _yes(flag: object) -> str:
    return "up" if flag else "down"


def _format_status(report: dict[str, Any]) -> str:
    agent, leaf, upstream, device = (
        report["agent"], report["leaf"], report["upstream"], report["device"]
    )  # fmt: skip
    lines = [
        f"agent    : {_yes(agent['up'])}" + (f" (pid {agent['pid']})" if agent["pid"] else ""),
        f"host id  : {agent['host_id'] or '-'}",
        f"leaf     : {_yes(leaf['up'])} {leaf.get('version') or ''} at {agent['client_url']}",
    ]
    if upstream["configured"]:
        state = "connected" if upstream["connected"] else "not connected"
        lines.append(f"upstream : {state} ({', '.join(upstream['configured'])})")
    else:
        lines.append("upstream : none configured (standalone)")
    for actor in report.get("actors", []):
        lines.append(f"actor    : {actor['id']} {actor['name']} x{actor['instances']}")
    temperature = device["temperature_c"]
    load = " ".join(f"{x:.2f}" for x in device["load_average"])
    lines += [
        f"profile  : {report['profile']}",
        f"memory   : {device['memory_available_mb']} MB free of {device['memory_total_mb']} MB",
        f"cpu      : {device['cpu_percent']}%  load {load}",
        f"disk     : {device['disk_free_mb']} MB free ({device['disk_percent']}% used)",
        f"temp     : {f'{temperature:.1f} °C' if temperature is not None else 'n/a'}",
    ]
    return "\n".join(lines)


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


# --- actor ------------------------------------------------------------------------------


@cli.group()
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
) -> tuple[tuple[str, ...], bool, int]:
    """Trusted issuers, the unsigned policy and the page budget: config plus flags."""
    from agent.boards import resolve_board

    config = _load(config_path) or embedded_default()
    issuers = tuple(dict.fromkeys([*config.trust.trusted_issuers, *extra]))
    pages = resolve_board(config).budgets.actor_memory_pages
    return issuers, allow_unsigned or config.trust.allow_unsigned, pages


trust_options = [
    config_option,
    click.option("--trust-issuer", "trust_issuers", multiple=True,
                 callback=_public_keys(KeyKind.ACCOUNT),
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
    from agent.runtime.admission import inspect_report

    issuers, unsigned_ok, pages = _trust(config_path, trust_issuers, allow_unsigned)
    report = inspect_report(
        _read_module(file), trusted_issuers=issuers, allow_unsigned=unsigned_ok, max_pages=pages
    )
    click.echo(json.dumps(report, indent=2) if as_json else _format_inspect(report))
    verdict = report["verdict"]
    if not verdict["accepted"]:
        raise ModuleError(f"{file}: rejected: {verdict['reason']}")


def _format_inspect(report: dict[str, Any]) -> str:
    claims = report.get("claims") or {}
    memory = report.get("memory") or {}
    admitted = report.get("memory_admitted") or {}
    imports = ", ".join(f"{i['module']}.{i['name']}" for i in report.get("imports", []))
    exports = ", ".join(e["name"] for e in report.get("exports", []))
    hash_state = {True: "matches", False: "DOES NOT MATCH", None: "-"}[report.get("hash_matches")]
    verdict = report["verdict"]
    lines = [
        f"size      : {report.get('size')} bytes",
        f"name      : {claims.get('name') or '-'}",
        f"issuer    : {claims.get('issuer') or '(unsigned)'}",
        f"subject   : {claims.get('subject') or '-'}",
        f"caps      : {', '.join(claims.get('caps') or []) or '-'}",
        f"tags      : {', '.join(claims.get('tags') or []) or '-'}",
        f"rev / ver : {claims.get('rev', '-')} / {claims.get('ver') or '-'}",
        f"expires   : {claims.get('expires_iso') or 'never'}",
        f"hash      : {report.get('module_hash')} ({hash_state})",
        f"imports   : {imports or '-'}",
        f"exports   : {exports or '-'}",
        f"memory    : {memory.get('min_pages', '-')}..{memory.get('max_pages') or 'unbounded'} "
        f"pages, admitted as ..{admitted.get('max_pages', '-')}",
        "verdict   : " + ("accepted" if verdict["accepted"] else f"rejected: {verdict['reason']}"),
    ]
    lines += [f"warning   : {warning}" for warning in report.get("warnings", [])]
    return "\n".join(lines)


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

    config = _load(config_path) or embedded_default()
    issuers, unsigned_ok, _ = _trust(config_path, trust_issuers, allow_unsigned)
    body = sys.stdin.buffer.read() if payload == "-" else payload.encode()
    outcome = asyncio.run(
        call_module(
            _read_module(file), operation, body, trusted_issuers=issuers,
            allow_unsigned=unsigned_ok, budgets=resolve_board(config).budgets, timeout=timeout,
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
    """Start an actor on the local host through the lattice; print its key."""
    config, host_id = _local_host(config_path)
    started = _on_lattice(config, lambda client: client.start_actor(host_id, actor_ref, count))
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
    from agent.lattice.client import connect

    async def go() -> T:
        url = f"nats://{config.leaf.listen}"
        async with connect(url, lattice=config.host.lattice) as client:
            return await work(client)

    return asyncio.run(go())


def _local_host(config_path: Path | None) -> tuple[Config, str]:
    """The config of the host on this device and its id."""
    from agent.identity.host import load_host_keys

    config = _load(config_path) or embedded_default()
    return config, load_host_keys(config.keys_dir).host_id


@cli.command()
def demo() -> None:
    """Run the tour: start a host, ping it, start and invoke an actor, stop it."""
    from agent.demo import run_demo

    _setup_logging("warning")
    asyncio.run(run_demo(click.echo))


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
        if _debug["enabled"]:
            traceback.print_exc()
        click.echo(f"lattice-edge: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
