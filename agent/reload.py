"""Reloading a running agent's config: what may change without a restart, and what changed.

The config stays one frozen object loaded once: a reload loads a *new* one from the same
file with the same loader, and :func:`plan_reload` compares the two. The keys in
:data:`RUNTIME_KEYS` are taken over by the running host (:meth:`agent.host.Host.reload`
swaps them in one place); every other difference is reported as needing a restart and
not applied, so what runs is always either the old value or the new one, never a mix
inside one subsystem. The effective config (old, with the runtime keys from the new one)
becomes the host's config, so a second reload keeps reporting what still waits for a
restart.

Triggers: SIGHUP, and ``lattice-edge reload`` (a request on
``lattice-edge.host.{id}.reload`` from the agent user, so the caller gets the report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import Config, load_config
from agent.errors import LatticeEdgeError

__all__ = [
    "RUNTIME_KEYS",
    "Change",
    "ReloadPlan",
    "answer_reload",
    "load_again",
    "plan_reload",
    "reload_logged",
]

logger = logging.getLogger("lattice_edge.host")

# Dotted config keys a running host applies on reload.
RUNTIME_KEYS = (
    "trust.trusted_issuers",
    "trust.cluster_issuers",
    "trust.allow_unsigned",
    "host.labels",
    "log.level",
    # The leaf restarts with a new upstream (an enrollment writes one); the agent does not.
    "upstream",
    "upstream.urls",
    "upstream.credentials",
    "upstream.tls_ca_file",
    "upstream.tls_cert_file",
    "upstream.tls_key_file",
    "upstream.tls_handshake_first",
)
# Config fields spelt as the file's keys.
_TOP_LEVEL_KEYS = {"log_level": "log.level", "log_format": "log.format", "log_file": "log.file"}
_WHOLE = {"log.file"}  # sections compared as one value, not key by key


@dataclass(frozen=True, slots=True)
class Change:
    """One key that changed, with its old and new value (JSON-ready)."""

    key: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does: the effective config, what changed, what needs a restart."""

    effective: Config
    changed: tuple[Change, ...]
    restart_needed: tuple[Change, ...]

    def to_json(self) -> dict[str, Any]:
        """The report ``lattice-edge reload --json`` prints (keys documented in docs/cli.md)."""
        source = self.effective.source
        return {
            "config": str(source.absolute()) if source is not None else None,
            "changed": [dataclasses.asdict(c) for c in self.changed],
            "restart_needed": [dataclasses.asdict(c) for c in self.restart_needed],
        }

    def summary(self) -> str:
        """One line for the agent's log."""
        changed = ", ".join(c.key for c in self.changed) or "nothing"
        text = f"config reloaded: changed {changed}"
        if self.restart_needed:
            text += "; needs a restart: " + ", ".join(c.key for c in self.restart_needed)
        return text


def load_again(current: Config) -> Config:
    """Load the running config's file again (the embedded default: rebuilt from scratch)."""
    return load_config(current.source)


def plan_reload(current: Config, new: Config) -> ReloadPlan:
    """Compare ``current`` with a freshly loaded ``new``; see the module docstring."""
    before, after = _flatten(current), _flatten(new)
    changed: list[Change] = []
    restart: list[Change] = []
    for key in sorted(set(before) | set(after)):
        old, fresh = before.get(key), after.get(key)
        if old == fresh:
            continue
        change = Change(key, _jsonable(old), _jsonable(fresh))
        (changed if key in RUNTIME_KEYS else restart).append(change)
    effective = dataclasses.replace(
        current,
        trust=new.trust,
        host=dataclasses.replace(current.host, labels=new.host.labels),
        log_level=new.log_level,
        upstream=new.upstream,
    )
    return ReloadPlan(effective, tuple(changed), tuple(restart))


def _flatten(config: Config) -> dict[str, Any]:
    """Dotted keys to values: each section's keys one by one (``budgets`` too); values
    such as an address, a label table or the log file are compared whole."""
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        if field.name == "source":
            continue
        key = _TOP_LEVEL_KEYS.get(field.name, field.name)
        value = getattr(config, field.name)
        if key in _WHOLE:
            flat[key] = value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                flat[f"{key}.{item.name}"] = getattr(value, item.name)
        elif isinstance(value, Mapping):
            for name, item in value.items():
                flat[f"{key}.{name}"] = item
        else:
            flat[key] = value
    return flat


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


Reload = Callable[[], Awaitable[ReloadPlan]]


async def reload_logged(reload: Reload) -> None:
    """Reload, logging a refusal (SIGHUP has nobody to answer)."""
    try:
        await reload()
    except LatticeEdgeError as exc:
        logger.error("reload refused, the running config stays: %s", exc)


def answer_reload(reload: Reload) -> Callable[[Any], Awaitable[None]]:
    """The handler of ``lattice-edge.host.{id}.reload``: reload, answer with the report.

    The reply is ``{"ok": true, "config", "changed", "restart_needed"}`` or
    ``{"ok": false, "error"}`` (a config that does not load changes nothing).
    """

    async def handle(msg: Any) -> None:
        try:
            reply: dict[str, Any] = {"ok": True, **(await reload()).to_json()}
        except LatticeEdgeError as exc:
            logger.error("reload refused, the running config stays: %s", exc)
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: reported to the caller and logged, never fatal
            logger.error("reload failed", exc_info=exc)
            reply = {"ok": False, "error": f"the agent failed to reload: {exc}"}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    return handle
