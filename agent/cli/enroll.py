"""``lattice-edge enroll``: join a fleet with a one-time token; the keys never leave the device."""

from __future__ import annotations

import time
from pathlib import Path

import click

from agent.cli.common import config_option, echo_json, json_option, key_values_option

__all__ = ["enroll"]


@click.command()
@click.option("--url", required=True, help="The hub's client URL (nats:// or tls://).")
@click.option(
    "--bootstrap-creds",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The fleet's bootstrap .creds (from 'fleet bootstrap-creds').",
)
@click.option("--token", "token_text", required=True, help="A token from 'fleet token create'.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=key_values_option,
    help="A label to ask for, KEY=VALUE (the token's labels win); repeatable.",
)
@config_option
@json_option
def enroll(
    url: str,
    bootstrap_creds: Path,
    token_text: str,
    labels: dict[str, str],
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Join this device to a fleet with a one-time token.

    The device must be initialised ('lattice-edge init'); its keys never leave it. It
    proves to the fleet service that it holds them, spends the token, and gets back its
    credentials for the hub (the agent renews them at half their life), the fleet's leaf
    URLs, its labels and the fleet's trusted issuers, which go into its config. A running
    agent is asked to reconnect its leaf at once. Prints the host id.

    \b
    Examples:
      lattice-edge enroll --url tls://hub:4222 --bootstrap-creds boot.creds --token TOKEN
      lattice-edge enroll --url tls://hub:4222 --bootstrap-creds boot.creds --token TOKEN --json

    \b
    JSON keys: host_id, fleet, config, labels, leaf_urls, expires_at, agent_pid, notice
    """
    from agent.enroll import enroll as enroll_device

    outcome = enroll_device(
        url=url,
        bootstrap_creds=bootstrap_creds,
        token_text=token_text,
        config_path=config_path,
        labels=labels,
    )
    if as_json:
        echo_json(
            {
                "host_id": outcome.host_id,
                "fleet": outcome.fleet,
                "config": str(outcome.config_path),
                "labels": outcome.labels,
                "leaf_urls": list(outcome.leaf_urls),
                "expires_at": outcome.expires_at,
                "agent_pid": outcome.agent_pid,
                "notice": outcome.notice,
            }
        )
        return
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(outcome.expires_at))
    labels_text = ", ".join(f"{k}={v}" for k, v in outcome.labels.items()) or "none"
    click.echo(f"enrolled {outcome.host_id} in fleet {outcome.fleet}", err=True)
    click.echo(f"  labels      : {labels_text}", err=True)
    click.echo(f"  upstream    : {', '.join(outcome.leaf_urls)}", err=True)
    click.echo(f"  credentials : valid until {expires}, renewed by the agent", err=True)
    if outcome.agent_pid is not None:
        click.echo(f"  agent       : pid {outcome.agent_pid} asked to reconnect its leaf", err=True)
    if outcome.notice:
        click.echo(f"  note        : {outcome.notice}", err=True)
    click.echo(outcome.host_id)
