"""``lattice-edge fleet deploy|undeploy|deployments|status``: declarative rollout of actors
to the fleet's devices, recorded by the fleet service and carried out by its reconciler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from agent.cli.common import echo_json, json_option, key_values_option
from agent.cli.fleet import (
    admin_call,
    dir_option,
    fleet,
    fleet_timeout,
    in_our_words,
    load_fleet_dir,
    show,
    when,
)

__all__ = ["fleet_deploy", "fleet_deployments", "fleet_status", "fleet_undeploy"]


def _selector(selector: dict[str, str], everywhere: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector.items()) or everywhere


@fleet.command("deploy")
@dir_option
@click.argument("name")
@click.argument("module", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--selector",
    "selector",
    multiple=True,
    callback=key_values_option,
    help="K=V: run on hosts with this label; repeatable (all must match).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Instances on each matching host.",
)
@click.option(
    "--max-unavailable",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Hosts updated at once when the module changes.",
)
@json_option
def fleet_deploy(
    fleet_dir: Path | None, name: str, module: Path, selector: dict[str, str], count: int,
    max_unavailable: int, as_json: bool,
) -> None:  # fmt: skip
    """Run a module on every host that matches a selector.

    NAME names the deployment: deploying NAME again with another module, selector or
    count updates it, --max-unavailable hosts at a time; the same again changes nothing.
    The module is checked first as the fleet's devices would check it (trusted issuers),
    then uploaded to the fleet's object store on the hub. Hosts that enroll later get it
    too. 'fleet status NAME' shows how far it got.

    \b
    Examples:
      lattice-edge fleet deploy greet ./greet.wasm --selector site=berlin
      lattice-edge fleet deploy greet ./greet.wasm --selector site=berlin --count 2 --json

    \b
    JSON keys: deployment, changed
    """
    from agent.cli.actor import read_module
    from agent.errors import FleetRequestError, ModuleFormatError
    from agent.fleet.deploy import deploy
    from agent.lattice.refs import MAX_MODULE_BYTES

    fleet_config = load_fleet_dir(fleet_dir)
    try:
        size = module.stat().st_size
    except OSError as exc:
        raise ModuleFormatError(f"cannot read {module}: {exc.strerror or exc}") from exc
    if size > MAX_MODULE_BYTES:
        raise ModuleFormatError(f"{module} is larger than {MAX_MODULE_BYTES} bytes")
    data = read_module(module)
    try:
        reply = asyncio.run(deploy(fleet_config, name, data, selector=selector, count=count,
                                   max_unavailable=max_unavailable))  # fmt: skip
    except FleetRequestError as exc:
        raise in_our_words(exc, "deploy", fleet_config, None) from exc
    record = reply["deployment"]

    def text() -> str:
        what = "deployed" if reply.get("changed") else "unchanged:"
        return (f"{what} {record['name']} version {record['version']} ({record['actor_id']}, "
                f"sha256 {record['sha256'][:16]}) x{record['count']} on "
                f"{_selector(record['selector'], 'every host')}")  # fmt: skip

    show(reply, as_json, text)


@fleet.command("undeploy")
@dir_option
@click.argument("name")
@fleet_timeout
@json_option
def fleet_undeploy(fleet_dir: Path | None, name: str, timeout: float, as_json: bool) -> None:
    """Stop a deployment on every host.

    The deployment stays listed, as deleted, in 'fleet deployments'; deploying NAME
    again brings it back.

    \b
    Examples:
      lattice-edge fleet undeploy greet
      lattice-edge fleet undeploy greet --json

    \b
    JSON keys: deployment, changed
    """
    reply = admin_call(fleet_dir, "undeploy", {"name": name}, timeout=timeout)
    if as_json:
        echo_json(reply)
        return
    what = "undeployed" if reply.get("changed") else "already undeployed:"
    click.echo(f"{what} {name} (version {reply['deployment']['version']})", err=True)


@fleet.command("deployments")
@dir_option
@fleet_timeout
@json_option
def fleet_deployments(fleet_dir: Path | None, timeout: float, as_json: bool) -> None:
    """List the deployments, deleted ones too.

    \b
    Examples:
      lattice-edge fleet deployments
      lattice-edge fleet deployments --json

    \b
    JSON keys: deployments
    """
    reply = admin_call(fleet_dir, "deployments", timeout=timeout)

    def text() -> str:
        if not reply["deployments"]:
            return "no deployments (make one with 'lattice-edge fleet deploy')"
        rows = [f"{'name':20} {'ver':>4} {'state':8} {'count':>5} {'sha256':16} selector"]
        for d in reply["deployments"]:
            rows.append(f"{d['name']:20} {d['version']:>4} {d['state']:8} {d['count']:>5} "
                        f"{d['sha256'][:16]:16} {_selector(d['selector'], '*')}")  # fmt: skip
        return "\n".join(rows)

    show(reply, as_json, text)


@fleet.command("status")
@dir_option
@click.argument("name")
@fleet_timeout
@json_option
def fleet_status(fleet_dir: Path | None, name: str, timeout: float, as_json: bool) -> None:
    """Show where a deployment runs, host by host.

    Each matching host is running, updating, pending, failed (with the device's own
    error) or never-seen (enrolled, but never on the lattice).

    \b
    Examples:
      lattice-edge fleet status greet
      lattice-edge fleet status greet --json

    \b
    JSON keys: deployment, hosts, now
    """
    reply = admin_call(fleet_dir, "status", {"name": name}, timeout=timeout)

    def text() -> str:
        d = reply["deployment"]
        rows = [f"{d['name']} version {d['version']} ({d['state']}), sha256 {d['sha256'][:16]}"]
        if not reply["hosts"]:
            rows.append("no matching hosts")
            return "\n".join(rows)
        rows.append(f"{'host':56} {'name':14} {'state':10} {'inst':>4} {'sha256':16} "
                    f"{'since':19} detail")  # fmt: skip
        for h in reply["hosts"]:
            detail = h.get("error") or h.get("reason") or ""
            rows.append(f"{h['host_id']:56} {(h.get('name') or '-')[:14]:14} {h['state']:10} "
                        f"{h.get('instances') or 0:>4} {(h.get('sha256') or '-')[:16]:16} "
                        f"{when(h.get('since')):19} {detail}")  # fmt: skip
        return "\n".join(rows)

    show(reply, as_json, text)
