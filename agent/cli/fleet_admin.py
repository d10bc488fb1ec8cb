"""``lattice-edge fleet token create|list|revoke``, ``fleet devices`` and ``fleet revoke``:
the fleet service's admin requests, signed with the fleet's admin key."""

from __future__ import annotations

import time
from pathlib import Path

import click

from agent.cli.common import echo_json, json_option
from agent.cli.fleet import (
    DURATION,
    admin_call,
    dir_option,
    fleet,
    fleet_timeout,
    label_option,
    load_fleet_dir,
    self_hosted_operator_options,
    show,
    show_labels,
    when,
)

__all__ = ["fleet_devices", "fleet_revoke", "token"]


# --- tokens ------------------------------------------------------------------------------------


@fleet.group("token")
def token() -> None:
    """Create, list and revoke one-time enrollment tokens.

    A token enrolls one device, once, and gives it the token's labels. Tokens live in the
    fleet service's state on the hub: these commands need 'fleet serve' running.
    """


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
@fleet_timeout
@json_option
def token_create(
    fleet_dir: Path | None, labels: dict[str, str], expires: int, count: int, timeout: float,
    as_json: bool,
) -> None:  # fmt: skip
    """Create tokens that each enroll one device, once.

    Each token is printed on a line of its own; hand one to each device ('lattice-edge
    enroll --token'). The device gets the token's labels (they win over the labels it
    asks for).

    \b
    Examples:
      lattice-edge fleet token create --label site=berlin --expires 48h
      lattice-edge fleet token create --label site=berlin --count 10 --json

    \b
    JSON keys: tokens
    """
    args = {"labels": labels, "expires_in": expires, "count": count}
    reply = admin_call(fleet_dir, "token.create", args, timeout=timeout)
    show(reply, as_json, lambda: "\n".join(item["token"] for item in reply["tokens"]))


@token.command("list")
@dir_option
@fleet_timeout
@json_option
def token_list(fleet_dir: Path | None, timeout: float, as_json: bool) -> None:
    """List the tokens and their states, never their secrets.

    A token is unused, spent (by the host shown) or revoked.

    \b
    Examples:
      lattice-edge fleet token list
      lattice-edge fleet token list --json

    \b
    JSON keys: tokens
    """
    reply = admin_call(fleet_dir, "token.list", timeout=timeout)

    def text() -> str:
        if not reply["tokens"]:
            return "no tokens (make some with 'lattice-edge fleet token create')"
        rows = [f"{'id':12} {'state':8} {'expires':19} {'labels':24} used by"]
        for t in reply["tokens"]:
            labels = show_labels(t.get("labels"))
            rows.append(f"{t['id']:12} {t.get('state', '?'):8} {when(t.get('expires_at')):19} "
                        f"{labels:24} {t.get('host_key') or '-'}")  # fmt: skip
        return "\n".join(rows)

    show(reply, as_json, text)


@token.command("revoke")
@dir_option
@click.argument("token_id")
@fleet_timeout
@json_option
def token_revoke(fleet_dir: Path | None, token_id: str, timeout: float, as_json: bool) -> None:
    """Revoke a token that has not been used yet.

    TOKEN_ID is the id 'fleet token list' shows (the third part of the token). A token
    already spent cannot be revoked: revoke its device with 'fleet revoke'.

    \b
    Examples:
      lattice-edge fleet token revoke TOKEN_ID
      lattice-edge fleet token revoke TOKEN_ID --json

    \b
    JSON keys: token
    """
    reply = admin_call(fleet_dir, "token.revoke", {"id": token_id}, timeout=timeout)
    if as_json:
        echo_json(reply)
        return
    click.echo(f"revoked token {token_id}", err=True)


# --- devices and revocation --------------------------------------------------------------------


@fleet.command("devices")
@dir_option
@fleet_timeout
@json_option
def fleet_devices(fleet_dir: Path | None, timeout: float, as_json: bool) -> None:
    """List the enrolled devices.

    With their labels, when they enrolled and last renewed their credentials, when those
    expire, and whether the device is revoked.

    \b
    Examples:
      lattice-edge fleet devices
      lattice-edge fleet devices --json

    \b
    JSON keys: devices
    """
    reply = admin_call(fleet_dir, "devices", timeout=timeout)

    def text() -> str:
        if not reply["devices"]:
            return "no devices enrolled"
        rows = [f"{'host key':56} {'name':16} {'enrolled':19} {'renewed':19} "
                f"{'expires':19} revoked labels"]  # fmt: skip
        for d in reply["devices"]:
            rows.append(
                f"{d['host_key']:56} {(d.get('name') or '-')[:16]:16} "
                f"{when(d.get('enrolled_at')):19} {when(d.get('last_renew')):19} "
                f"{when(d.get('credential_expires')):19} {'yes' if d.get('revoked') else 'no':7} "
                f"{show_labels(d.get('labels'))}"
            )
        return "\n".join(rows)

    show(reply, as_json, text)


@fleet.command("revoke")
@dir_option
@click.argument("host_key")
@self_hosted_operator_options("the account JWT file to add the revocation to")
@fleet_timeout
@json_option
def fleet_revoke(
    fleet_dir: Path | None, host_key: str, operator_seed: Path | None, account_jwt: Path | None,
    timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Revoke a device: refuse its renewals and its credentials.

    Its renewals are refused at once. Its credentials work until they expire unless its
    user keys are revoked in the fleet's account too: it prints the nsc commands that do
    it, or, for a self-hosted operator, --operator-seed and --account-jwt write the
    revocations into the account JWT (push that to the hub).

    \b
    Examples:
      lattice-edge fleet revoke HOST_KEY
      lattice-edge fleet revoke HOST_KEY --json

    \b
    JSON keys: device, user_keys, account_jwt, nsc_commands
    """
    from agent.errors import FleetDirError
    from agent.fleet.fleetdir import resign_account_file

    if (operator_seed is None) != (account_jwt is None):
        raise FleetDirError("--operator-seed and --account-jwt go together")
    fleet_config = load_fleet_dir(fleet_dir)
    reply = admin_call(fleet_dir, "revoke", {"host_key": host_key}, timeout=timeout)
    users: list[str] = reply["user_keys"]
    commands: list[str] = []
    if operator_seed is not None and account_jwt is not None:
        resign_account_file(
            account_jwt, operator_seed, account=fleet_config.account,
            revocations=dict.fromkeys(users, int(time.time())),
        )  # fmt: skip
    else:
        commands = [
            f'nsc revocations add-user --account "$FLEET_ACCOUNT" --user-public-key {user} --at 0'
            for user in users
        ]
        commands.append('nsc push --account "$FLEET_ACCOUNT"')
    if as_json:
        echo_json(
            {
                "device": reply["device"],
                "user_keys": users,
                "account_jwt": str(account_jwt) if account_jwt is not None else None,
                "nsc_commands": commands,
            }
        )
        return
    click.echo(f"revoked {host_key}: its renewals are refused from now on", err=True)
    if account_jwt is not None:
        click.echo(f"wrote the re-signed account JWT to {account_jwt}; push it to the hub",
                   err=True)  # fmt: skip
        return
    click.echo("# revoke its credentials in the account too (FLEET_ACCOUNT = its nsc name):")
    for command in commands:
        click.echo(command)
