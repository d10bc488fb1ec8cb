"""``lattice-edge fleet …``: make a fleet, mint its credentials and tokens, serve it, and
list, revoke and (with the rollout) deploy to its devices. ``docs/fleet.md`` walks through it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.cli.common import key_values_option, public_keys_option, setup_logging
from agent.identity.keys import KeyKind

if TYPE_CHECKING:
    from agent.fleet.admin import AdminClient
    from agent.fleet.fleetdir import FleetDir

T = TypeVar("T")


if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
else:  # click before 8.2 (Debian bookworm ships 8.1) has no generic ParamType
    _IntParam = click.ParamType


class Duration(_IntParam):
    """``30s``, ``2m``, ``24h``, ``7d`` as seconds."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from agent.fleet.duration import parse_duration

        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def _account_key(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from agent.identity.keys import is_public_key

    if not is_public_key(value, KeyKind.ACCOUNT):
        raise click.BadParameter(f"'{value}' is not a public account key")
    return value


def dir_option(command: Any) -> Any:
    """``--dir DIR``: the fleet directory (default ``$LATTICE_EDGE_FLEET_DIR``, then the
    user's config dir)."""
    return click.option(
        "--dir",
        "fleet_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Fleet directory (default: $LATTICE_EDGE_FLEET_DIR, else the config dir's fleet/).",
    )(command)


label_option = click.option(
    "--label", "labels", multiple=True, callback=key_values_option, help="KEY=VALUE; repeatable."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _fleet(fleet_dir: Path | None) -> FleetDir:
    from agent.fleet.fleetdir import default_fleet_dir, load_fleet

    return load_fleet((fleet_dir or default_fleet_dir()).expanduser())


def _admin(fleet_dir: Path | None, work: Callable[[AdminClient], Awaitable[T]]) -> T:
    from agent.fleet.admin import admin_client

    fleet = _fleet(fleet_dir)

    async def run() -> T:
        async with admin_client(fleet) as client:
            return await work(client)

    return asyncio.run(run())


def _when(moment: object) -> str:
    if not isinstance(moment, int | float) or not moment:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))


def _print(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text())


@click.group()
def fleet() -> None:
    """Enroll devices into a fleet and roll actors out to them."""


# --- init ------------------------------------------------------------------------------------


@fleet.command("init")
@dir_option
@click.option(
    "--hub",
    "hub_urls",
    multiple=True,
    required=True,
    help="The hub's client URL (nats:// or tls://); repeatable.",
)
@click.option(
    "--creds",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The fleet service's .creds on the hub (a user of --account; copied).",
)
@click.option(
    "--account", required=True, callback=_account_key, help="The fleet's account public key (A…)."
)
@click.option(
    "--leaf-url",
    "leaf_urls",
    multiple=True,
    required=True,
    help="Leafnode URL devices connect to (nats-leaf://, tls://); repeatable.",
)
@click.option("--lattice", default="default", show_default=True, help="The fleet's lattice.")
@click.option(
    "--credential-ttl",
    type=DURATION,
    default="7d",
    show_default=True,
    help="Lifetime of device credentials; devices renew at half of it.",
)
@click.option(
    "--trust-issuer",
    "trust_issuers",
    multiple=True,
    callback=public_keys_option(KeyKind.ACCOUNT),
    help="Account key whose actors the fleet's devices run; repeatable.",
)
@click.option(
    "--cluster-issuer",
    "cluster_issuers",
    multiple=True,
    callback=public_keys_option(KeyKind.CLUSTER),
    help="Cluster key whose invocations devices accept; repeatable.",
)
@click.option(
    "--js-domain", default=None, help="The hub's JetStream domain (default: asked from the hub)."
)
@click.option(
    "--operator-seed",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Self-hosted operator: its seed, to re-sign --account-jwt.",
)
@click.option(
    "--account-jwt",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Self-hosted operator: the account JWT file to rewrite with the keys.",
)
@json_option
def fleet_init(
    fleet_dir: Path | None,
    hub_urls: tuple[str, ...],
    creds: Path,
    account: str,
    leaf_urls: tuple[str, ...],
    lattice: str,
    credential_ttl: int,
    trust_issuers: list[str],
    cluster_issuers: list[str],
    js_domain: str | None,
    operator_seed: Path | None,
    account_jwt: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Create a fleet: scoped signing keys, admin key and fleet.toml; print the account's
    signing key entries (or write them into --account-jwt)."""
    from agent.errors import FleetDirError
    from agent.fleet.admin import discover_js_domain
    from agent.fleet.fleetdir import (
        FleetInit,
        default_fleet_dir,
        init_fleet,
        resign_account_file,
    )

    if (operator_seed is None) != (account_jwt is None):
        raise FleetDirError("--operator-seed and --account-jwt go together")
    if js_domain is None:
        js_domain = asyncio.run(discover_js_domain(hub_urls[0], creds))
    result = init_fleet(
        FleetInit(
            path=fleet_dir or default_fleet_dir(),
            hub_urls=hub_urls,
            creds=creds,
            account=account,
            leaf_urls=leaf_urls,
            js_domain=js_domain,
            lattice=lattice,
            credential_ttl_s=credential_ttl,
            trusted_issuers=tuple(trust_issuers),
            cluster_issuers=tuple(cluster_issuers),
        )
    )
    if operator_seed is not None and account_jwt is not None:
        resign_account_file(
            account_jwt, operator_seed, account=account, signing_keys=tuple(result.signing_keys)
        )
    output = result.to_json()
    if account_jwt is not None:
        output["account_jwt"] = str(account_jwt)
    if as_json:
        click.echo(json.dumps(output))
        return
    click.echo(json.dumps({"account": output["account"], "signing_keys": output["signing_keys"]},
                          indent=2))  # fmt: skip
    click.echo(f"\n# fleet {result.fleet.fleet_id} in {result.fleet.path}")
    if account_jwt is not None:
        click.echo(f"# wrote the re-signed account JWT to {account_jwt}; push it to the hub")
    else:
        click.echo("# add the keys to the account (FLEET_ACCOUNT = its nsc name):")
        for command in result.nsc_commands:
            click.echo(command)


# --- bootstrap credential ------------------------------------------------------------------


@fleet.command("bootstrap-creds")
@dir_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The .creds file to write (0600).",
)
@click.option(
    "--expires", type=DURATION, default=None, help="Lifetime of the credential (default: none)."
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def fleet_bootstrap_creds(
    fleet_dir: Path | None, output: Path, expires: int | None, force: bool
) -> None:  # fmt: skip
    """Write the bootstrap credential baked into the fleet's images: it can only enroll."""
    from agent.errors import ConfigError
    from agent.fleet.admin import mint_bootstrap_creds
    from agent.identity import jwt

    if output.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    creds = mint_bootstrap_creds(_fleet(fleet_dir), expires)
    jwt.write_creds(output, creds)
    click.echo(f"wrote {output} (user {creds.user_public_key})", err=True)


# --- tokens ------------------------------------------------------------------------------------


@fleet.group("token")
def token() -> None:
    """Single-use enrollment tokens."""


@token.command("create")
@dir_option
@label_option
@click.option(
    "--expires",
    type=DURATION,
    default="24h",
    show_default=True,
    help="How long the tokens can be used.",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="How many tokens to make.",
)
@json_option
def token_create(
    fleet_dir: Path | None, labels: dict[str, str], expires: int, count: int, as_json: bool
) -> None:  # fmt: skip
    """Create tokens bound to labels; each enrolls one device, once."""
    args = {"labels": labels, "expires_in": expires, "count": count}
    reply = _admin(fleet_dir, lambda c: c.call("token.create", args))
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    for item in reply["tokens"]:
        click.echo(item["token"])


@token.command("list")
@dir_option
@json_option
def token_list(fleet_dir: Path | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    reply = _admin(fleet_dir, lambda c: c.call("token.list"))

    def text() -> str:
        rows = [f"{'id':12} {'state':8} {'expires':19} {'labels':24} used by"]
        for t in reply["tokens"]:
            labels = ",".join(f"{k}={v}" for k, v in (t.get("labels") or {}).items())
            rows.append(f"{t['id']:12} {t.get('state', '?'):8} {_when(t.get('expires_at')):19} "
                        f"{labels or '-':24} {t.get('host_key') or '-'}")  # fmt: skip
        return "\n".join(rows)

    _print(reply, as_json, text)


@token.command("revoke")
@dir_option
@click.argument("token_id")
def token_revoke(fleet_dir: Path | None, token_id: str) -> None:
    """Revoke an unused token."""
    _admin(fleet_dir, lambda c: c.call("token.revoke", {"id": token_id}))
    click.echo(f"revoked token {token_id}", err=True)


# --- serve -------------------------------------------------------------------------------------


@fleet.command("serve")
@dir_option
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def fleet_serve(fleet_dir: Path | None, log_level: str) -> None:
    """Run the fleet service (enrollment, renewal, admin, rollout) until SIGTERM."""
    from agent.fleet.service import run_service

    fleet_config = _fleet(fleet_dir)
    setup_logging(log_level)

    def ready(fleet_id: str) -> None:
        click.echo(f"fleet {fleet_id} serving on {', '.join(fleet_config.hub_urls)}", err=True)

    asyncio.run(run_service(fleet_config, on_ready=ready))


# --- devices and revocation --------------------------------------------------------------------


@fleet.command("devices")
@dir_option
@json_option
def fleet_devices(fleet_dir: Path | None, as_json: bool) -> None:
    """List enrolled devices."""
    reply = _admin(fleet_dir, lambda c: c.call("devices"))

    def text() -> str:
        rows = [f"{'host key':56} {'name':16} {'enrolled':19} {'renewed':19} "
                f"{'expires':19} revoked labels"]  # fmt: skip
        for d in reply["devices"]:
            labels = ",".join(f"{k}={v}" for k, v in (d.get("labels") or {}).items())
            rows.append(
                f"{d['host_key']:56} {(d.get('name') or '-')[:16]:16} "
                f"{_when(d.get('enrolled_at')):19} {_when(d.get('last_renew')):19} "
                f"{_when(d.get('credential_expires')):19} {'yes' if d.get('revoked') else 'no':7} "
                f"{labels or '-'}"
            )
        return "\n".join(rows)

    _print(reply, as_json, text)


@fleet.command("revoke")
@dir_option
@click.argument("host_key")
@click.option(
    "--operator-seed",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Self-hosted operator: its seed, to re-sign --account-jwt.",
)
@click.option(
    "--account-jwt",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Self-hosted operator: the account JWT file to add the revocation to.",
)
def fleet_revoke(
    fleet_dir: Path | None, host_key: str, operator_seed: Path | None, account_jwt: Path | None
) -> None:  # fmt: skip
    """Refuse a device's renewals now and revoke its user keys in the account."""
    from agent.errors import FleetDirError
    from agent.fleet.fleetdir import resign_account_file

    if (operator_seed is None) != (account_jwt is None):
        raise FleetDirError("--operator-seed and --account-jwt go together")
    fleet_config = _fleet(fleet_dir)
    reply = _admin(fleet_dir, lambda c: c.call("revoke", {"host_key": host_key}))
    users: list[str] = reply["user_keys"]
    moment = int(time.time())
    click.echo(f"revoked {host_key}: its renewals are refused from now on", err=True)
    if operator_seed is not None and account_jwt is not None:
        resign_account_file(
            account_jwt, operator_seed, account=fleet_config.account,
            revocations=dict.fromkeys(users, moment),
        )  # fmt: skip
        click.echo(f"wrote the re-signed account JWT to {account_jwt}; push it to the hub",
                   err=True)  # fmt: skip
        return
    click.echo("# revoke its credentials in the account too (FLEET_ACCOUNT = its nsc name):")
    for user in users:
        click.echo(
            f'nsc revocations add-user --account "$FLEET_ACCOUNT" --user-public-key {user} --at 0'
        )
    click.echo('nsc push --account "$FLEET_ACCOUNT"')


# --- rollout -----------------------------------------------------------------------------------


@fleet.command("deploy")
@dir_option
@click.argument("name")
@click.argument("module", type=click.Path(dir_okay=False, exists=True, path_type=Path))
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
    """Run MODULE as NAME on every host matching the selector (deploy again to update)."""
    from agent.errors import ModuleFormatError
    from agent.fleet.deploy import deploy
    from agent.lattice.refs import MAX_MODULE_BYTES

    fleet_config = _fleet(fleet_dir)
    if module.stat().st_size > MAX_MODULE_BYTES:
        raise ModuleFormatError(f"{module} is larger than {MAX_MODULE_BYTES} bytes")
    data = module.read_bytes()
    reply = asyncio.run(deploy(fleet_config, name, data, selector=selector, count=count,
                               max_unavailable=max_unavailable))  # fmt: skip
    record = reply["deployment"]

    def text() -> str:
        what = "deployed" if reply.get("changed") else "unchanged:"
        where = ",".join(f"{k}={v}" for k, v in record["selector"].items()) or "every host"
        return (f"{what} {record['name']} version {record['version']} ({record['actor_id']}, "
                f"sha256 {record['sha256'][:16]}) x{record['count']} on {where}")  # fmt: skip

    _print(reply, as_json, text)


@fleet.command("undeploy")
@dir_option
@click.argument("name")
def fleet_undeploy(fleet_dir: Path | None, name: str) -> None:
    """Stop NAME on every host."""
    reply = _admin(fleet_dir, lambda c: c.call("undeploy", {"name": name}))
    click.echo(f"undeployed {name} (version {reply['deployment']['version']})", err=True)


@fleet.command("deployments")
@dir_option
@json_option
def fleet_deployments(fleet_dir: Path | None, as_json: bool) -> None:
    """List deployments."""
    reply = _admin(fleet_dir, lambda c: c.call("deployments"))

    def text() -> str:
        rows = [f"{'name':20} {'ver':>4} {'state':8} {'count':>5} {'sha256':16} selector"]
        for d in reply["deployments"]:
            selector = ",".join(f"{k}={v}" for k, v in d["selector"].items()) or "*"
            rows.append(f"{d['name']:20} {d['version']:>4} {d['state']:8} {d['count']:>5} "
                        f"{d['sha256'][:16]:16} {selector}")  # fmt: skip
        return "\n".join(rows)

    _print(reply, as_json, text)


@fleet.command("status")
@dir_option
@click.argument("name")
@json_option
def fleet_status(fleet_dir: Path | None, name: str, as_json: bool) -> None:
    """Per matching host: running, pending, failed, or never seen."""
    reply = _admin(fleet_dir, lambda c: c.call("status", {"name": name}))

    def text() -> str:
        d = reply["deployment"]
        rows = [f"{d['name']} version {d['version']} ({d['state']}), sha256 {d['sha256'][:16]}",
                f"{'host':56} {'name':14} {'state':10} {'inst':>4} {'sha256':16} {'since':19} "
                "detail"]  # fmt: skip
        for h in reply["hosts"]:
            detail = h.get("error") or h.get("reason") or ""
            rows.append(f"{h['host_id']:56} {(h.get('name') or '-')[:14]:14} {h['state']:10} "
                        f"{h.get('instances') or 0:>4} {(h.get('sha256') or '-')[:16]:16} "
                        f"{_when(h.get('since')):19} {detail}")  # fmt: skip
        return "\n".join(rows)

    _print(reply, as_json, text)
