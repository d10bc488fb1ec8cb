"""``lattice-edge trust add|remove|list``: change whom the host trusts in its config file.

The file stays the operator's: only the one array assignment (``trusted_issuers`` or
``cluster_issuers`` in ``[trust]``) is rewritten, every other byte — comments, order,
other keys — is kept. The result is checked twice before it replaces the file: parsed
again, it must differ from the old table in that one key only, and it must pass the same
loader ``run`` uses (:func:`agent.config.parse_config`), so a bad edit never reaches the
disk. The file is then replaced atomically with its mode kept. A running agent applies
the change on SIGHUP or ``lattice-edge reload`` (:mod:`agent.reload`).

The key's kind decides the list: an account key (``A…``) is an actor issuer, a cluster
key (``C…``) a cluster issuer whose invocations are accepted.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import ENV_PREFIX, Config, parse_config
from agent.errors import ConfigError
from agent.fsutil import rewrite_atomic
from agent.identity.keys import KeyKind, is_public_key

__all__ = ["TRUST_KEYS", "TrustEdit", "edit_trust", "trust_key_for", "trust_lists"]

# The [trust] key each kind of public key belongs to.
TRUST_KEYS = {KeyKind.ACCOUNT: "trusted_issuers", KeyKind.CLUSTER: "cluster_issuers"}
_HEADER = re.compile(r"^[ \t]*\[[ \t]*([A-Za-z0-9_.\"' -]+?)[ \t]*\][ \t]*(#.*)?$")
_ARRAY_HEADER = re.compile(r"^[ \t]*\[\[")


@dataclass(frozen=True, slots=True)
class TrustEdit:
    """What an edit did: the lists as they are now and the keys it added or removed."""

    path: Path
    trusted_issuers: tuple[str, ...]
    cluster_issuers: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the file was rewritten."""
        return bool(self.added or self.removed)

    def to_json(self) -> dict[str, Any]:
        """The report ``trust add|remove --json`` prints."""
        return {
            "config": str(self.path),
            "added": list(self.added),
            "removed": list(self.removed),
            "trusted_issuers": list(self.trusted_issuers),
            "cluster_issuers": list(self.cluster_issuers),
            "warnings": list(self.warnings),
        }


def trust_key_for(public_key: str) -> str:
    """``trusted_issuers`` for an account key, ``cluster_issuers`` for a cluster key."""
    for kind, key in TRUST_KEYS.items():
        if is_public_key(public_key, kind):
            return key
    raise ConfigError(
        f"'{public_key}' is neither a public account key (A…, an actor issuer) nor a public "
        "cluster key (C…, a cluster issuer)"
    )


def trust_lists(config: Config) -> dict[str, list[str]]:
    """Both trust lists of a loaded config (what ``trust list --json`` prints)."""
    return {
        "trusted_issuers": list(config.trust.trusted_issuers),
        "cluster_issuers": list(config.trust.cluster_issuers),
    }


def edit_trust(
    path: Path,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> TrustEdit:
    """Add and remove public keys in ``path``'s ``[trust]`` lists; see the module docstring.

    Adding a key that is there already, or removing one that is not, changes nothing
    (the result says what was actually done). Raises ConfigError for a key of the wrong
    kind, a file that cannot be read or parsed, or a ``[trust]`` table written in a form
    this edit does not touch (inline or dotted: edit those by hand).
    """
    targets = {key: trust_key_for(key) for key in [*add, *remove]}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", source=path) from exc
    raw = _parse(text, path)
    trust = raw.get("trust", {})
    if not isinstance(trust, dict):
        raise ConfigError("must be a table", key="trust", source=path)
    lists = {key: list(_strings(trust.get(key, []), key, path)) for key in TRUST_KEYS.values()}
    added: list[str] = []
    removed: list[str] = []
    for public in add:
        values = lists[targets[public]]
        if public not in values:
            values.append(public)
            added.append(public)
    for public in remove:
        values = lists[targets[public]]
        if public in values:
            values.remove(public)
            removed.append(public)
    if added or removed:
        for key in {targets[k] for k in [*added, *removed]}:
            text = _set_array(text, key, lists[key], path)
        _check(text, raw, lists, path)
        _replace(path, text)
    return TrustEdit(
        path=path,
        trusted_issuers=tuple(lists["trusted_issuers"]),
        cluster_issuers=tuple(lists["cluster_issuers"]),
        added=tuple(added),
        removed=tuple(removed),
        warnings=_overridden(env),
    )


def _replace(path: Path, text: str) -> None:
    """Write the edit atomically, keeping the file's mode and (as root) its owner."""
    try:
        rewrite_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot write: {exc.strerror or exc} (nothing was changed)", source=path
        ) from exc


def _parse(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=path) from exc


def _strings(value: Any, key: str, path: Path) -> Iterable[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of strings", key=f"trust.{key}", source=path)
    return value


def _overridden(env: Mapping[str, str] | None) -> tuple[str, ...]:
    environ = os.environ if env is None else env
    prefix = ENV_PREFIX + "TRUST_"
    return tuple(
        f"${name} is set and overrides trust.{name.removeprefix(prefix).lower()} in the file"
        for name in sorted(environ)
        if name.startswith(prefix)
    )


def _render(key: str, values: Sequence[str]) -> str:
    if len(values) <= 1:
        return f"{key} = [{', '.join(json.dumps(v) for v in values)}]\n"
    return f"{key} = [\n" + "".join(f"    {json.dumps(v)},\n" for v in values) + "]\n"


def _set_array(text: str, key: str, values: Sequence[str], path: Path) -> str:
    """``text`` with ``[trust] key`` assigned ``values``: replaced where it is, else added."""
    lines = text.splitlines(keepends=True)
    start = _table_start(lines)
    if start is None:
        if "trust" in _parse(text, path):
            raise ConfigError(
                "is written as an inline or dotted table, which 'lattice-edge trust' does not "
                "edit; change it by hand or write it as a [trust] section",
                key="trust",
                source=path,
            )
        separator = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{separator}\n[trust]\n{_render(key, values)}"
    end = _table_end(lines, start)
    assignment = re.compile(rf"^[ \t]*{key}[ \t]*=")
    for index in range(start + 1, end):
        if assignment.match(lines[index]):
            stop = _value_end(lines, index, path)
            return "".join([*lines[:index], _render(key, values), *lines[stop:]])
    return "".join([*lines[: start + 1], _render(key, values), *lines[start + 1 :]])


def _table_start(lines: Sequence[str]) -> int | None:
    for index, line in enumerate(lines):
        match = _HEADER.match(line.rstrip("\r\n"))
        if match and not _ARRAY_HEADER.match(line) and match.group(1).strip() == "trust":
            return index
    return None


def _table_end(lines: Sequence[str], start: int) -> int:
    for index in range(start + 1, len(lines)):
        if lines[index].lstrip().startswith("["):
            return index
    return len(lines)


def _value_end(lines: Sequence[str], first: int, path: Path) -> int:
    """The index of the line after the value assigned on line ``first`` (arrays may span
    lines, and strings or comments may hold brackets)."""
    depth = 0
    quote: str | None = None
    for index in range(first, len(lines)):
        line = lines[index]
        position = line.index("=") + 1 if index == first else 0
        while position < len(line):
            char = line[position]
            if quote is not None:
                if char == "\\" and quote == '"':
                    position += 1
                elif char == quote:
                    quote = None
            elif char in "\"'":
                quote = char
            elif char == "#":
                break
            elif char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            position += 1
        if depth <= 0 and quote is None:
            return index + 1
    raise ConfigError("the array does not end", key="trust", source=path)


def _check(
    text: str, before: Mapping[str, Any], lists: Mapping[str, list[str]], path: Path
) -> None:
    """The edited text changes the two lists and nothing else, and ``run`` would load it."""
    after = _parse(text, path)
    expected = {**before, "trust": {**before.get("trust", {}), **lists}}
    for key, values in lists.items():
        if not values and key not in before.get("trust", {}):
            expected["trust"].pop(key)  # an untouched, absent list stays absent
    if after != expected:
        raise ConfigError(
            "the edit would change more than the trust lists (an unusual layout?); "
            "nothing was written, edit the file by hand",
            source=path,
        )
    parse_config(after, source=path, base_dir=path.parent.resolve())
