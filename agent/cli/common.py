"""What the ``lattice-edge`` commands share: the ``--config`` option, logging set-up, config
loading and option callbacks. Part of the click layer (``agent.cli``), the only package that
imports click.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from agent.config import (
    CONFIG_ENV,
    Config,
    HostPort,
    default_config_path,
    load_config,
    locate_config,
)
from agent.identity.keys import KeyKind, is_public_key

# Set once by the --debug flag; read when an error is printed, after click is done.
DEBUG = {"enabled": bool(os.environ.get("LATTICE_EDGE_DEBUG"))}

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Config file (default: ${CONFIG_ENV}, then {default_config_path()}).",
)


def setup_logging(level: str, log_format: str = "text") -> None:
    from agent.logs import setup_logging as configure

    configure(level, log_format, debug=DEBUG["enabled"])


def load_or_none(config_path: Path | None) -> Config | None:
    located = locate_config(config_path)
    return load_config(located) if located is not None else None


def host_port_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(HostPort.parse(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def public_keys_option(kind: KeyKind) -> Any:
    def check(_ctx: click.Context, _param: click.Parameter, values: Sequence[str]) -> list[str]:
        for value in values:
            if not is_public_key(value, kind):
                raise click.BadParameter(f"'{value}' is not a public {kind.name.lower()} key")
        return list(values)

    return check


def key_values_option(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> dict[str, str]:
    """A repeatable ``KEY=VALUE`` option (labels, selectors) as a dict."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE")
        pairs[key] = value
    return pairs
