"""Durable desired state: which actors should run (with counts and annotations) and which
link definitions exist, so a restarted agent — also after ``kill -9`` or a power cut —
brings them back without asking the cloud.

One JSON file, replaced atomically on every change. A file that cannot be used — not
JSON, not UTF-8, a NUL in a reference, a directory in its place — is moved aside
(``state.json.corrupt-<time>``), never silently overwritten, and the agent starts empty
with an error in the log.

:class:`StateKeeper` is what the host writes through. It makes a control request durable
*before* it is acknowledged: the request's intent (start N of this reference, scale that
actor to N, update it to that reference) is written first and settled when the work is
done, so a crash in between replays the intent on the next start. When the disk refuses
(full, read-only), the agent keeps serving from memory, says so in ``status`` and the
heartbeat, and retries the write; memory and disk never disagree silently. Actors whose
restore failed are kept in the file with the reason, not dropped.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import ActorRefError, StateError
from agent.fsutil import write_atomic
from agent.lattice.control_codec import LinkDefinition
from agent.lattice.refs import parse_ref

__all__ = ["DesiredActor", "DesiredState", "StateKeeper", "StateStore"]

logger = logging.getLogger("lattice_edge.state")
STATE_VERSION = 1
MAX_STATE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DesiredActor:
    """An actor that should be running: where it came from and how many instances.

    ``actor_id`` and ``module_sha256`` are empty while a start is pending (the module
    has not been fetched yet); ``error`` says why the last restore of it failed.
    """

    actor_id: str
    actor_ref: str
    module_sha256: str
    count: int = 1
    annotations: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything that should be running."""

    actors: tuple[DesiredActor, ...] = ()
    links: tuple[LinkDefinition, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The file's contents."""
        actors = []
        for actor in self.actors:
            entry = asdict(actor) | {"annotations": dict(actor.annotations)}
            if entry["error"] is None:
                del entry["error"]
            actors.append(entry)
        return {
            "version": STATE_VERSION,
            "actors": actors,
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


def _text(item: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not (value or empty) or "\x00" in value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def _actor(item: object) -> DesiredActor:
    if not isinstance(item, dict):
        raise ValueError("an actor entry must be an object")
    count = item.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("an actor's count must be a positive integer")
    ref = _text(item, "actor_ref")
    try:
        parse_ref(ref)
    except ActorRefError as exc:
        raise ValueError(f"actor_ref: {exc}") from exc
    error = item.get("error")
    if error is not None and not isinstance(error, str):
        raise ValueError("an actor's error must be a string")
    return DesiredActor(
        actor_id=_text(item, "actor_id", empty=True),
        actor_ref=ref,
        module_sha256=_text(item, "module_sha256", empty=True),
        count=count,
        annotations=_strings(item.get("annotations", {}), "annotations"),
        error=error,
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
    """Reads and atomically rewrites the desired-state file. Blocking (small files)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> DesiredState:
        """The saved state; empty when there is none or it is unusable (moved aside)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return DesiredState()
        except OSError as exc:  # a directory, a symlink, no permission: not a state file
            return self._set_aside(f"cannot be read ({exc.strerror or exc})")
        try:
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
            if len(data) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            return DesiredState.from_json(json.loads(data.decode("utf-8")))
        except OSError as exc:
            return self._set_aside(f"cannot be read ({exc.strerror or exc})")
        except ValueError as exc:  # JSON, UTF-8 and our own checks all raise ValueError
            return self._set_aside(f"is invalid ({exc})")

    def _set_aside(self, problem: str) -> DesiredState:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            logger.error(
                "desired state %s %s and cannot be moved aside (%s); starting empty",
                self.path,
                problem,
                exc.strerror or exc,
            )
        else:
            logger.error(
                "desired state %s %s; kept as %s, starting empty", self.path, problem, aside
            )
        return DesiredState()

    def save(self, state: DesiredState) -> None:
        """Replace the file with ``state``; :class:`StateError` when the disk refuses."""
        try:
            write_atomic(self.path, json.dumps(state.to_json(), indent=1).encode())
        except OSError as exc:
            raise StateError(
                f"cannot save the desired state to {self.path}: {exc.strerror or exc}"
            ) from exc


@dataclass(frozen=True, slots=True)
class _Intent:
    """A control request accepted but not yet carried out."""

    actor_ref: str
    actor_id: str = ""  # known for scale and update
    count: int = 1  # start: instances to add; scale: instances wanted (0: stop)
    annotations: Mapping[str, str] = field(default_factory=dict)
    kind: str = "start"  # "start", "scale" or "update"


class StateKeeper:
    """Keeps the desired-state file in step with what the host runs (see the module doc).

    ``snapshot`` returns what runs now; the keeper adds pending intents and the actors
    whose restore failed, and writes the result.
    """

    def __init__(self, store: StateStore, snapshot: Callable[[], DesiredState]) -> None:
        self.store = store
        self._snapshot = snapshot
        self._intents: dict[int, _Intent] = {}
        self._ids = itertools.count()
        self._failed: dict[str, DesiredActor] = {}  # by actor id or reference
        self.error: str | None = None  # why the file is behind memory; None when in step

    @property
    def saved(self) -> bool:
        """Whether the file says what memory says."""
        return self.error is None

    def desired(self) -> DesiredState:
        """What the file should say now."""
        current = self._snapshot()
        actors = {actor.actor_id: actor for actor in current.actors}
        pending: list[DesiredActor] = []
        for intent in self._intents.values():
            running = actors.get(intent.actor_id)
            if intent.kind == "scale" and running is not None:
                if intent.count == 0:
                    del actors[intent.actor_id]
                else:
                    actors[intent.actor_id] = replace(running, count=intent.count)
            elif intent.kind == "update" and running is not None:
                actors[intent.actor_id] = replace(
                    running, actor_ref=intent.actor_ref, module_sha256=""
                )
            elif intent.kind == "start":
                pending.append(
                    DesiredActor(
                        intent.actor_id, intent.actor_ref, "", intent.count, intent.annotations
                    )
                )
        failed = [a for key, a in self._failed.items() if key not in actors]
        return DesiredState((*actors.values(), *pending, *failed), current.links)

    def save(self) -> None:
        """Write the desired state; on failure remember why (and raise StateError)."""
        try:
            self.store.save(self.desired())
        except StateError as exc:
            if self.error is None:
                logger.error("%s; serving from memory and retrying", exc)
            self.error = str(exc)
            raise
        if self.error is not None:
            logger.info("desired state saved again after: %s", self.error)
        self.error = None

    def try_save(self) -> bool:
        """:meth:`save` that reports failure by returning False (already logged)."""
        try:
            self.save()
        except StateError:
            return False
        return True

    def begin(
        self,
        kind: str,
        actor_ref: str,
        *,
        actor_id: str = "",
        count: int = 1,
        annotations: Mapping[str, str] | None = None,
    ) -> int:
        """Make a request durable before it is acknowledged; returns a token for :meth:`settle`.

        Raises StateError, with nothing changed, when the disk refuses: the request must
        then be refused rather than acknowledged.
        """
        token = next(self._ids)
        self._intents[token] = _Intent(actor_ref, actor_id, count, dict(annotations or {}), kind)
        try:
            self.save()
        except StateError:
            del self._intents[token]
            raise
        return token

    def settle(self, token: int) -> None:
        """The work of ``begin`` is over (done or failed): drop its intent and save."""
        self._intents.pop(token, None)
        self.try_save()

    def restore_failed(self, actor: DesiredActor, reason: str) -> None:
        """Keep an actor whose restore failed, with the reason, instead of dropping it."""
        self._failed[actor.actor_id or actor.actor_ref] = replace(actor, error=reason)

    def forget_failed(self, key: str) -> bool:
        """Drop a failed entry (by actor id or reference); True when there was one."""
        return self._failed.pop(key, None) is not None

    def failed(self) -> list[DesiredActor]:
        """Actors whose restore failed, with their reasons."""
        return list(self._failed.values())
