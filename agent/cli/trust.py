"""``lattice-edge trust add|remove|list``: whom the host trusts, kept in its config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from agent.cli.common import choose_config, config_option, echo_json, json_option, timeout_option

__all__ = ["trust"]


@click.group()
def trust() -> None:
    """Add, remove and list the keys this host trusts.

    An account key (A…) is an actor issuer: actors it signed may run here. A cluster key
    (C…) is a cluster issuer: invocations it signed are accepted. The config file is
    edited in place (comments kept); the running agent applies it on 'lattice-edge
    reload' or SIGHUP, or at once with --reload.
    """


def _edit_target(config_path: Path | None) -> tuple[Path, Any]:
    from agent.errors import ConfigError

    choice = choose_config(config_path)
    if choice.path is None:
        raise ConfigError(
            "there is no config file to edit (the agent runs on the embedded default); "
            "write one with 'lattice-edge init' first"
        )
    return choice.path, choice


def _change(
    keys: tuple[str, ...],
    *,
    adding: bool,
    config_path: Path | None,
    apply: bool,
    timeout: float,
    as_json: bool,
) -> None:
    from agent.cli.service import format_reload, reload_agent
    from agent.trustedit import edit_trust

    path, _ = _edit_target(config_path)
    edit = edit_trust(path, add=keys if adding else (), remove=() if adding else keys)
    report: dict[str, Any] | None = None
    if apply:
        from agent.config import load_config

        report = reload_agent(load_config(path), timeout)
    if as_json:
        echo_json({**edit.to_json(), "reload": report})
        return
    for key in keys:
        done = key in (edit.added if adding else edit.removed)
        verb = ("added" if done else "already trusted") if adding else (
            "removed" if done else "was not trusted")  # fmt: skip
        click.echo(f"{verb}: {key}")
    for warning in edit.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report is not None:
        click.echo(format_reload(report))
    elif edit.changed:
        click.echo(
            f"saved {path}; apply it to the running agent with 'lattice-edge reload'", err=True
        )


_keys = click.argument("keys", nargs=-1, required=True, metavar="KEY...")
_reload = click.option(
    "--reload", "apply", is_flag=True, help="Make the running agent apply it now."
)


@trust.command("add")
@_keys
@_reload
@config_option
@timeout_option(10.0, "for the agent's answer with --reload")
@json_option
def trust_add(
    keys: tuple[str, ...], apply: bool, config_path: Path | None, timeout: float, as_json: bool
) -> None:
    """Trust account keys (actor issuers) or cluster keys.

    \b
    Examples:
      lattice-edge trust add ACCOUNT_KEY
      lattice-edge trust add ACCOUNT_KEY --reload --json

    \b
    JSON keys: config, added, removed, trusted_issuers, cluster_issuers, warnings, reload
    """
    _change(keys, adding=True, config_path=config_path, apply=apply, timeout=timeout,
            as_json=as_json)  # fmt: skip


@trust.command("remove")
@_keys
@_reload
@config_option
@timeout_option(10.0, "for the agent's answer with --reload")
@json_option
def trust_remove(
    keys: tuple[str, ...], apply: bool, config_path: Path | None, timeout: float, as_json: bool
) -> None:
    """Stop trusting account or cluster keys.

    Actors already running stay until they are stopped or the host restarts; new starts
    of their modules are refused.

    \b
    Examples:
      lattice-edge trust remove ACCOUNT_KEY
      lattice-edge trust remove ACCOUNT_KEY --reload --json

    \b
    JSON keys: config, added, removed, trusted_issuers, cluster_issuers, warnings, reload
    """
    _change(keys, adding=False, config_path=config_path, apply=apply, timeout=timeout,
            as_json=as_json)  # fmt: skip


@trust.command("list")
@config_option
@json_option
def trust_list(config_path: Path | None, as_json: bool) -> None:
    """List the actor issuers and cluster issuers this host trusts.

    The host also accepts invocations signed by its own cluster key.

    \b
    Examples:
      lattice-edge trust list
      lattice-edge trust list --json

    \b
    JSON keys: config, trusted_issuers, cluster_issuers, allow_unsigned
    """
    from agent.trustedit import trust_lists

    choice = choose_config(config_path)
    lists = trust_lists(choice.config)
    if as_json:
        echo_json(
            {
                "config": str(choice.path) if choice.path else None,
                **lists,
                "allow_unsigned": choice.config.trust.allow_unsigned,
            }
        )
        return
    click.echo(f"config          : {choice.describe()}")
    for title, key in (("actor issuer", "trusted_issuers"), ("cluster issuer", "cluster_issuers")):
        for public in lists[key]:
            click.echo(f"{title:16}: {public}")
        if not lists[key]:
            click.echo(f"{title:16}: none")
    if choice.config.trust.allow_unsigned:
        click.echo("unsigned actors : allowed")
