"""What the ``lattice-edge`` commands share: the ``--config``, ``--json`` and ``--timeout``
options, logging set-up, config resolution, JSON output and the docstring conventions
that ``--help``, ``docs/cli.md`` and the tests read. Part of the click layer
(``agent.cli``), the only package that imports click.

Docstring conventions (every command follows them; ``tests/unit/test_cli_tree.py``
checks it): the first line is a whole sentence short enough for the command list; an
``Examples:`` block lists command lines that work as written (the tests run the ``--json``
ones); a ``JSON keys:`` line names the top-level keys of the ``--json`` output (``[a, b]``
for a list of objects), which are stable.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.config import (
    CONFIG_ENV,
    Config,
    HostPort,
    default_config_path,
    default_data_dir,
    load_config,
    locate_config,
)
from agent.identity.keys import KeyKind, is_public_key

# Set once by the --debug flag; read when an error is printed, after click is done.
DEBUG = {"enabled": bool(os.environ.get("LATTICE_EDGE_DEBUG"))}
# Set while docs/cli.md is generated: help shows paths for any user, not this one.
DOCS = {"enabled": False}

F = TypeVar("F", bound=Callable[..., Any])


# --- help that is computed when it is shown -------------------------------------------------


class LiveHelpOption(click.Option):
    """An option whose help text is computed when help is shown, not at import.

    Default paths depend on who runs the command (root or not, ``$XDG_CONFIG_HOME``), so
    ``--help`` must say them for the user reading it.
    """

    def __init__(self, *args: Any, live_help: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live_help = live_help

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self._live_help()
        return super().get_help_record(ctx)


def shown_config_path() -> str:
    """The default config path as help shows it."""
    if DOCS["enabled"]:
        return "/etc/lattice-edge/agent.toml as root, else ~/.config/lattice-edge/agent.toml"
    return str(default_config_path())


def shown_data_dir() -> str:
    """The default data directory as help shows it."""
    if DOCS["enabled"]:
        return "/var/lib/lattice-edge as root, else ~/.local/share/lattice-edge"
    return str(default_data_dir())


def _config_help() -> str:
    system = (
        "" if shown_config_path().startswith("/etc/") else ", then /etc/lattice-edge/agent.toml"
    )
    return (
        f"Config file (default: ${CONFIG_ENV}, then the config of the agent this user runs, "
        f"then {shown_config_path()}{system})."
    )


def _own_config_help() -> str:
    return f"Config file (default: ${CONFIG_ENV}, then {shown_config_path()})."


config_option = click.option(
    "--config",
    "config_path",
    cls=LiveHelpOption,
    live_help=_config_help,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
)
# For 'run' and 'init', which never take another running agent's config.
own_config_option = click.option(
    "--config",
    "config_path",
    cls=LiveHelpOption,
    live_help=_own_config_help,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (its keys are listed below)."
)


def timeout_option(default: float, what: str = "for the agent") -> Callable[[F], F]:
    """``--timeout SECONDS``: how long a lattice command waits."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=default,
        show_default=True,
        help=f"Seconds to wait {what}.",
    )


def no_data_output(reason: str) -> Callable[[click.Command], click.Command]:
    """Mark a command that prints no data, so it needs no ``--json`` (say why).

    Apply it above ``@group.command(...)``. The CLI tree test fails for any command that
    has neither ``--json`` nor this mark, so a new command cannot forget either.
    """

    def mark(command: click.Command) -> click.Command:
        command.no_data_output = reason  # type: ignore[attr-defined]
        return command

    return mark


# --- docstring conventions -----------------------------------------------------------------

_JSON_KEYS = re.compile(r"^\s*JSON keys:\s*(.+)$", re.MULTILINE)


def examples_of(command: click.Command) -> list[str]:
    """The command lines in a command's ``Examples:`` block."""
    lines = (command.help or "").splitlines()
    found: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == "Examples:":
            inside = True
        elif inside and stripped.startswith("lattice-edge "):
            found.append(stripped)
        elif inside and stripped and not stripped.startswith("\b"):
            inside = False
    return found


def json_keys_of(command: click.Command) -> tuple[list[str], bool] | None:
    """The documented top-level ``--json`` keys, and whether the output is a list."""
    lines = (command.help or "").splitlines()
    for index, line in enumerate(lines):
        match = _JSON_KEYS.match(line)
        if match is None:
            continue
        parts = [match.group(1)]
        for more in lines[index + 1 :]:  # continuation lines, up to the paragraph's end
            if not more.strip():
                break
            parts.append(more)
        text = " ".join(part.strip() for part in parts).rstrip(".")
        is_list = text.startswith("[") and text.endswith("]")
        keys = [key.strip() for key in text.strip("[]").split(",") if key.strip()]
        return keys, is_list
    return None


# --- config, logging, output --------------------------------------------------------------


def setup_logging(level: str, log_format: str = "text", config: Config | None = None) -> None:
    """Log to stderr (and the config's ``[log] file`` for ``run``) at ``level``."""
    from agent.logs import setup_logging as configure

    configure(
        level,
        log_format,
        debug=DEBUG["enabled"],
        log_file=config.log_file if config is not None else None,
    )


def choose_config(config_path: Path | None) -> Any:
    """The config a command uses (:func:`agent.running.resolve_config`)."""
    from agent.running import resolve_config

    return resolve_config(config_path)


def load_config_for(config_path: Path | None) -> Config:
    """The config a command uses: see :func:`choose_config`."""
    config: Config = choose_config(config_path).config
    return config


def load_or_none(config_path: Path | None) -> Config | None:
    """The config file named or found by the default rules (``run`` and ``init``)."""
    located = locate_config(config_path)
    return load_config(located) if located is not None else None


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def read_payload(payload: str, payload_file: Path | None, as_base64: bool, msgpack: bool) -> bytes:
    """An invocation's payload: the argument (``-`` reads stdin), a file, base64 or JSON
    packed as msgpack (what wasmCloud interfaces take)."""
    import base64
    import binascii

    if payload_file is not None:
        if payload:
            raise click.UsageError("give PAYLOAD or --payload-file, not both")
        try:
            body = payload_file.read_bytes()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {payload_file}: {exc.strerror}", param_hint="--payload-file"
            ) from exc
    elif payload == "-":
        body = sys.stdin.buffer.read()
    else:
        body = payload.encode()
    if as_base64:
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise click.BadParameter(f"not base64: {exc}", param_hint="PAYLOAD") from exc
    if msgpack:
        import msgpack as packer

        try:
            value = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD") from exc
        body = packer.packb(value, use_bin_type=True)
    return body


def decode_response(response: bytes, msgpack: bool) -> Any:
    """A response as JSON-ready data: unpacked msgpack, else text or base64."""
    import base64

    if msgpack:
        import msgpack as packer

        try:
            value = packer.unpackb(response, raw=False)
        except (ValueError, packer.ExtraData, packer.FormatError, packer.StackError) as exc:
            raise click.ClickException(f"the response is not msgpack: {exc}") from exc
        return _jsonable(value)
    try:
        return {"text": response.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(response).decode()}


def _jsonable(value: Any) -> Any:
    import base64

    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- option callbacks ---------------------------------------------------------------------


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
