"""Durable desired state: which actors should run (with counts and annotations) and which
link definitions exist, so a restarted agent — also after ``kill -9`` or a power cut —
brings them back without asking the cloud.

One JSON file, replaced atomically on every change. A file that cannot be read is moved
aside (``state.json.corrupt-<time>``), never silently overwritten, and the agent starts
empty with an error in the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.fsutil import write_atomic
from agent.lattice.control_codec import LinkDefinition

__all__ = ["DesiredActor", "DesiredState", "StateStore"]

logger = logging.getLogger("lattice_edge.state")
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class DesiredActor:
    """An actor that should be running: where it came from and how many instances."""

    actor_id: str
    actor_ref: str
    module_sha256: str
    count: int = 1
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything that should be running."""

    actors: tuple[DesiredActor, ...] = ()
    links: tuple[LinkDefinition, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The file's contents."""
        return {
            "version": STATE_VERSION,
            "actors": [asdict(a) | {"annotations": dict(a.annotations)} for a in self.actors],
            "links": [link.to_json() for link in self.links],
        }

    @classmethod
    def from_json(cls, data: object) -> DesiredState:
        """Parse the file's contents; ``ValueError`` names what is wrong."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a version {STATE_VERSION} state document")
        actors = tuple(_actor(item) for item in _list(data, "actors"))
        links = tuple(_link(item) for item in _list(data, "links"))
        return cls(actors, links)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"'{key}' must be a list")
    return value


def _strings(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{what} must map strings to strings")
    return dict(value)


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def _actor(item: object) -> DesiredActor:
    if not isinstance(item, dict):
        raise ValueError("an actor entry must be an object")
    count = item.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("an actor's count must be a positive integer")
    return DesiredActor(
        actor_id=_text(item, "actor_id"),
        actor_ref=_text(item, "actor_ref"),
        module_sha256=_text(item, "module_sha256"),
        count=count,
        annotations=_strings(item.get("annotations", {}), "annotations"),
    )


def _link(item: object) -> LinkDefinition:
    if not isinstance(item, dict):
        raise ValueError("a link entry must be an object")
    return LinkDefinition(
        actor_id=_text(item, "actor_id"),
        provider_id=_text(item, "provider_id"),
        contract_id=_text(item, "contract_id"),
        link_name=_text(item, "link_name"),
        values=_strings(item.get("values", {}), "values"),
    )


class StateStore:
    """Reads and atomically rewrites the desired-state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> DesiredState:
        """The saved state; empty when there is none or it is unreadable (moved aside)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return DesiredState()
        except OSError as exc:
            logger.error("cannot read desired state %s: %s; starting empty", self.path, exc)
            return DesiredState()
        try:
            return DesiredState.from_json(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            self.path.rename(aside)
            logger.error("desired state %s is invalid (%s); kept as %s", self.path, exc, aside)
            return DesiredState()

    def save(self, state: DesiredState) -> None:
        """Replace the file with ``state``."""
        write_atomic(self.path, json.dumps(state.to_json(), indent=1).encode())
