"""``lattice-edge init``: write the config file and create the host keys.

Idempotent: running it again with the same answers changes nothing; different answers
need ``--force``, which rewrites the config but never replaces existing keys (the host
key is the device's identity on the lattice). Upstream credentials are validated and
copied next to the keys with mode 0600, so the config never points into a home directory.

Two rules serve the Debian package: its placeholder config (comments under
:data:`PLACEHOLDER_MARKER`) counts as no config, and when root initialises a data
directory that belongs to another user (the package's ``lattice-edge`` service user), what
``init`` writes there is handed to that user (:func:`agent.datadir.hand_over`), so the
service can read its keys.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config, HostPort, load_config, parse_config
from agent.datadir import hand_over
from agent.errors import ConfigError
from agent.fsutil import rewrite_atomic, write_secret
from agent.identity.host import ensure_host_keys
from agent.identity.jwt import format_creds, read_creds
from agent.identity.local import agent_user_path, ensure_agent_user
from agent.identity.tls import check_pem_certificate

__all__ = [
    "PLACEHOLDER_MARKER",
    "InitRequest",
    "InitResult",
    "initialise",
    "is_placeholder",
    "render_config",
    "render_table",
    "write_checked_config",
]

UPSTREAM_CREDS = "upstream.creds"
# The first line of the config the Debian package installs (packaging/deb/agent.toml).
PLACEHOLDER_MARKER = "# lattice-edge: placeholder installed by the package"


@dataclass(frozen=True, slots=True)
class InitRequest:
    """The answers ``init`` was given."""

    config_path: Path
    data_dir: Path
    profile: str = "auto"
    lattice: str = "default"
    name: str = "lattice-edge"
    listen: str | None = None
    monitor: str | None = None
    upstreams: tuple[str, ...] = ()
    upstream_creds: Path | None = None
    upstream_tls_ca: Path | None = None
    trusted_issuers: tuple[str, ...] = ()
    cluster_issuers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init`` did."""

    config_path: Path
    host_id: str
    message: str


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value)


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


def render_config(request: InitRequest, creds_path: Path | None) -> str:
    """The config file ``init`` writes for ``request``."""
    lines = [
        "# Lattice Edge agent configuration, written by 'lattice-edge init'.",
        "# Every key is documented in docs/configuration.md.",
        "",
        "[host]",
        f"name = {_toml_string(request.name)}",
        f"lattice = {_toml_string(request.lattice)}",
        f"profile = {_toml_string(request.profile)}",
        f"data_dir = {_toml_string(str(request.data_dir))}",
        "",
        "[leaf]",
        f"listen = {_toml_string(request.listen or '127.0.0.1:4222')}",
        f"monitor = {_toml_string(request.monitor or '127.0.0.1:8222')}",
        "",
        "[trust]",
        f"trusted_issuers = {_toml_list(request.trusted_issuers)}",
        f"cluster_issuers = {_toml_list(request.cluster_issuers)}",
    ]
    if request.upstreams:
        lines += ["", "[upstream]", f"urls = {_toml_list(request.upstreams)}"]
        if creds_path is not None:
            lines.append(f"credentials = {_toml_string(str(creds_path))}")
        if request.upstream_tls_ca is not None:
            lines.append(f"tls_ca_file = {_toml_string(str(request.upstream_tls_ca))}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_toml_string(str(k))} = {_toml_value(v, key)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    raise ConfigError(f"cannot write {type(value).__name__} values", key=key)


def render_table(raw: Mapping[str, Mapping[str, Any]], header: str) -> str:
    """A config file from a raw table (as ``tomllib`` reads it): one section per table,
    values as TOML scalars, lists and inline tables. Comments are not kept; ``header``
    (one line per comment line) goes on top."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, table in raw.items():
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", key=section)
        lines += ["", f"[{section}]"]
        lines += [
            f"{key} = {_toml_value(value, f'{section}.{key}')}" for key, value in table.items()
        ]
    return "\n".join(lines) + "\n"


def check_config_text(path: Path, text: str) -> Config:
    """Validate ``text`` as the config at ``path`` would be, without writing anything."""
    import tomllib

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=path) from exc
    return parse_config(raw, source=path, base_dir=path.parent.resolve())


def write_checked_config(path: Path, text: str) -> Config:
    """Write ``text`` to ``path`` atomically once the loader ``run`` uses accepts it;
    restore the previous file if the written one does not load."""
    check_config_text(path, text)
    existing = path.read_bytes() if path.exists() else None
    rewrite_atomic(path, text.encode())
    try:
        return load_config(path, env={})
    except ConfigError:
        if existing is not None:
            rewrite_atomic(path, existing)
        else:
            path.unlink()
        raise


def initialise(request: InitRequest, *, force: bool = False) -> InitResult:
    """Create keys and write the config; see the module docstring for the rules."""
    for address in (request.listen, request.monitor):
        if address is not None:
            try:
                HostPort.parse(address)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
    if (request.upstream_creds or request.upstream_tls_ca) and not request.upstreams:
        raise ConfigError("--upstream-creds and --upstream-tls-ca need --upstream URL")
    if request.upstream_tls_ca is not None:
        check_pem_certificate(request.upstream_tls_ca)
        request = dataclasses.replace(request, upstream_tls_ca=request.upstream_tls_ca.resolve())
    data_dir = request.data_dir.expanduser().resolve()
    request = dataclasses.replace(request, data_dir=data_dir)
    creds = read_creds(request.upstream_creds) if request.upstream_creds else None
    creds_path = data_dir / "keys" / UPSTREAM_CREDS if creds else None
    text = render_config(request, creds_path)

    previous = request.config_path.read_text() if request.config_path.exists() else None
    existing = None if previous is None or is_placeholder(previous) else previous
    if existing is not None and existing != text and not force:
        raise ConfigError(
            f"{request.config_path} already exists with other settings; "
            "pass --force to overwrite it (keys are kept)"
        )
    # Validate what we are about to write with the same loader 'run' uses.
    rewrite_atomic(request.config_path, text.encode())
    try:
        config = load_config(request.config_path, env={})
    except ConfigError:
        if previous is not None:
            rewrite_atomic(request.config_path, previous.encode())
        else:
            request.config_path.unlink()
        raise
    if creds is not None and creds_path is not None:
        write_secret(creds_path, format_creds(creds.jwt, creds.seed).encode())
    keys, created = ensure_host_keys(config.keys_dir)
    ensure_agent_user(config.host.data_dir)
    hand_over(config.host.data_dir, config.keys_dir, agent_user_path(config.host.data_dir).parent)
    if existing == text and not created:
        message = "already initialised"
    elif existing is None:
        message = "initialised"
    else:
        message = "config rewritten"
    return InitResult(request.config_path, keys.host_id, message)


def is_placeholder(text: str) -> bool:
    """True for the package's stand-in config: the marker line, then only comments."""
    lines = text.splitlines()
    return (
        bool(lines)
        and lines[0].startswith(PLACEHOLDER_MARKER)
        and all(not line.strip() or line.lstrip().startswith("#") for line in lines)
    )
