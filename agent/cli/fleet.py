"""``lattice-edge fleet …``: make a fleet (``init``), mint its bootstrap credential and
serve it, and what the other fleet commands share. Tokens, devices and revocation are in
:mod:`agent.cli.fleet_admin`, the rollout (``deploy``, ``status`` …) in
:mod:`agent.cli.fleet_rollout`. ``docs/fleet.md`` walks through it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli.common import (
    echo_json,
    json_option,
    key_values_option,
    no_data_output,
    public_keys_option,
    setup_logging,
    timeout_option,
)
from agent.identity.keys import KeyKind

if TYPE_CHECKING:
    from agent.errors import FleetRequestError
    from agent.fleet.fleetdir import FleetDir

__all__ = [
    "DURATION",
    "admin_call",
    "dir_option",
    "fleet",
    "fleet_timeout",
    "in_our_words",
    "label_option",
    "load_fleet_dir",
    "show",
    "show_labels",
    "when",
]


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


def self_hosted_operator_options(account_jwt_help: str) -> Callable[[Any], Any]:
    """``--operator-seed`` and ``--account-jwt``: for a hub whose operator is our own, the
    seed that re-signs the account JWT file, and that file."""

    def decorate(command: Any) -> Any:
        command = click.option(
            "--account-jwt",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"Self-hosted operator: {account_jwt_help}.",
        )(command)
        return click.option(
            "--operator-seed",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Self-hosted operator: its seed, to re-sign --account-jwt.",
        )(command)

    return decorate


label_option = click.option(
    "--label", "labels", multiple=True, callback=key_values_option, help="KEY=VALUE; repeatable."
)
# What every command that asks the fleet service waits (agent.fleet.request's default).
fleet_timeout = timeout_option(10.0, "for the fleet service's answer")


def load_fleet_dir(fleet_dir: Path | None) -> FleetDir:
    """The fleet of ``--dir`` (or the default directory)."""
    from agent.fleet.fleetdir import default_fleet_dir, load_fleet

    return load_fleet((fleet_dir or default_fleet_dir()).expanduser())


def admin_call(
    fleet_dir: Path | None, op: str, args: dict[str, Any] | None = None, *, timeout: float
) -> dict[str, Any]:
    """One signed admin request to the fleet service; its reply.

    The service's refusals and an absent service are reworded in terms of our commands
    (not of the request's wire name or subject).
    """
    from agent.errors import FleetRequestError
    from agent.fleet.admin import admin_client

    fleet = load_fleet_dir(fleet_dir)

    async def run() -> dict[str, Any]:
        async with admin_client(fleet) as client:
            return await client.call(op, args, timeout=timeout)

    try:
        return asyncio.run(run())
    except FleetRequestError as exc:
        raise in_our_words(exc, op, fleet, timeout) from exc


def in_our_words(
    exc: FleetRequestError, op: str, fleet: FleetDir, timeout: float | None
) -> FleetRequestError:
    """The fleet service's error for ``op``, in terms of our commands: an absent service
    names 'fleet serve', a refusal loses the request's wire name (``token.revoke: …``).
    ``timeout`` is the command's --timeout (None: it has none)."""
    from agent.errors import FleetRequestError

    serve = f"lattice-edge fleet serve --dir {fleet.path}"
    message = str(exc).removeprefix(f"{op}: ")
    if exc.reason == "no-service":
        message = (f"no fleet service answers for fleet {fleet.fleet_id} on "
                   f"{fleet.hub_urls[0]}; is '{serve}' running?")  # fmt: skip
    elif exc.reason == "timeout":
        within = f" within {timeout:g} s" if timeout is not None else ""
        longer = " (or pass a longer --timeout)" if timeout is not None else ""
        message = (f"the fleet service of fleet {fleet.fleet_id} did not answer{within}; "
                   f"is '{serve}' running?{longer}")  # fmt: skip
    return FleetRequestError(message, code=exc.code, reason=exc.reason)


def when(moment: object) -> str:
    """A UNIX time as the tables show it (UTC), ``-`` for none."""
    if not isinstance(moment, int | float) or not moment:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))


def show(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    """``data`` as JSON with ``--json``, else the human-readable ``text()``."""
    if as_json:
        echo_json(data)
    else:
        click.echo(text())


def show_labels(labels: dict[str, str] | None) -> str:
    """Labels as the tables show them: ``k=v,k=v``, ``-`` for none."""
    return ",".join(f"{k}={v}" for k, v in (labels or {}).items()) or "-"


@click.group()
def fleet() -> None:
    """Make a fleet, enroll devices and roll actors out to them.

    A fleet is a directory made by 'fleet init' (--dir; default $LATTICE_EDGE_FLEET_DIR,
    else fleet/ beside this user's agent.toml) that holds the fleet's keys and its
    credentials on the hub. 'fleet serve' runs the fleet service on the hub, which the
    other commands talk to; devices join it with 'lattice-edge enroll'. docs/fleet.md
    walks through it.
    """


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
@self_hosted_operator_options("the account JWT file to rewrite with the keys")
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
    """Create a fleet: signing keys, admin key and fleet.toml.

    The fleet's account must carry the two scoped signing keys it makes (one for device
    credentials, one for the bootstrap credential): it prints their entries and the nsc
    commands that add them, or, for a self-hosted operator, --operator-seed and
    --account-jwt write them into the account JWT (push that to the hub). The hub's
    JetStream domain is asked from the hub unless --js-domain names it.

    \b
    Examples:
      lattice-edge fleet init --hub tls://hub.example:4222 --creds fleet.creds --account ACCOUNT_KEY --leaf-url tls://hub.example:7422
      lattice-edge fleet init --hub tls://hub.example:4222 --creds fleet.creds --account ACCOUNT_KEY --leaf-url tls://hub.example:7422 --json

    \b
    JSON keys: fleet, dir, account, signing_keys, nsc_commands, account_jwt
    """  # noqa: E501
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
    output["account_jwt"] = str(account_jwt) if account_jwt is not None else None
    if as_json:
        echo_json(output)
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
@json_option
def fleet_bootstrap_creds(
    fleet_dir: Path | None, output: Path, expires: int | None, force: bool, as_json: bool
) -> None:  # fmt: skip
    """Write the enroll-only credential for the fleet's images.

    The bootstrap credential can do one thing on the hub: ask the fleet service to
    enroll a device with a token. Bake it into the devices' images for 'lattice-edge
    enroll --bootstrap-creds'. Made from the fleet directory alone; the service need not
    run.

    \b
    Examples:
      lattice-edge fleet bootstrap-creds -o bootstrap.creds
      lattice-edge fleet bootstrap-creds -o bootstrap.creds --expires 90d --json

    \b
    JSON keys: creds_file, user_key, fleet, expires_at
    """
    from agent.errors import ConfigError
    from agent.fleet.admin import mint_bootstrap_creds
    from agent.identity import jwt

    if output.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    fleet_config = load_fleet_dir(fleet_dir)
    creds = mint_bootstrap_creds(fleet_config, expires)
    jwt.write_creds(output, creds)
    if as_json:
        echo_json(
            {
                "creds_file": str(output),
                "user_key": creds.user_public_key,
                "fleet": fleet_config.fleet_id,
                "expires_at": jwt.decode(creds.jwt).claims.get("exp"),
            }
        )
        return
    click.echo(f"wrote {output} (user {creds.user_public_key})", err=True)


# --- serve -------------------------------------------------------------------------------------


@no_data_output("runs the fleet service in the foreground; its log is the output")
@fleet.command("serve")
@dir_option
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="What the service logs on stderr.",
)
def fleet_serve(fleet_dir: Path | None, log_level: str) -> None:
    """Run the fleet service until SIGTERM or SIGINT.

    The service answers enrollment, renewal and the admin commands on the hub, and rolls
    deployments out. Several may run at once for one fleet (they share its state on the
    hub's JetStream).

    \b
    Examples:
      lattice-edge fleet serve
      lattice-edge fleet serve --dir /srv/fleet --log-level debug
    """
    from agent.fleet.service import run_service

    fleet_config = load_fleet_dir(fleet_dir)
    setup_logging(log_level)

    def ready(fleet_id: str) -> None:
        click.echo(f"fleet {fleet_id} serving on {', '.join(fleet_config.hub_urls)}", err=True)

    asyncio.run(run_service(fleet_config, on_ready=ready))
