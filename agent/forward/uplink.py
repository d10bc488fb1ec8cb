"""The cloud side of store-and-forward: the hub stream every device forwards into.

One stream in the fleet's account captures ``lattice-edge.uplink.>``; each device publishes
only under ``lattice-edge.uplink.{its host key}.>`` (the fleet's device role allows nothing
else). Its **duplicate window** is what makes forwarding exactly-once: a device resends
what it had in flight when its link or its agent died, with the same ``Nats-Msg-Id``, as
soon as it can — seconds later after a crash, but only when the link returns after an
outage. Size the window to the longest outage during which you want no duplicate (the
default: one hour); the hub keeps about 200 bytes per message sent within the window.

:func:`ensure_uplink_stream` creates the stream, or adds its subject to an existing one and
sets its duplicate window (and the limits given, only those); :func:`nats_cli_command`
prints the equivalent ``nats stream add`` line for users of the ``nats`` CLI.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from agent.errors import ForwardError
from agent.forward.outbox import jetstream_api
from agent.forward.subjects import DEFAULT_UPSTREAM_PREFIX

__all__ = [
    "UPLINK_STREAM",
    "UplinkStreamSpec",
    "ensure_uplink_stream",
    "nats_cli_command",
    "parse_duration",
]

UPLINK_STREAM = "LATTICE_EDGE_UPLINK"
DEFAULT_DUPLICATE_WINDOW_S = 3600.0
_NS = 1_000_000_000
_STREAM_NOT_FOUND = 10059


@dataclass(frozen=True, slots=True)
class UplinkStreamSpec:
    """The hub stream: name, captured prefix, duplicate window and retention limits."""

    name: str = UPLINK_STREAM
    prefix: str = DEFAULT_UPSTREAM_PREFIX
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    # None: a new stream gets the default (keep forever, no size limit, one replica) and
    # an existing one keeps what it has
    max_age_s: float | None = None
    max_bytes: int | None = None
    replicas: int | None = None

    @property
    def subjects(self) -> list[str]:
        """What the stream captures."""
        return [f"{self.prefix}.>"]

    def config(self) -> dict[str, Any]:
        """The JetStream stream configuration."""
        return {
            "name": self.name,
            "description": "Lattice Edge uplink: messages forwarded by devices",
            "subjects": self.subjects,
            "retention": "limits",
            "storage": "file",
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1 if self.max_bytes is None else self.max_bytes,
            "max_age": int((self.max_age_s or 0.0) * _NS),
            "max_consumers": -1,
            "duplicate_window": int(self.duplicate_window_s * _NS),
            "num_replicas": self.replicas or 1,
        }

    def changes(self, current: dict[str, Any]) -> dict[str, Any]:
        """What an existing stream's config needs: its subjects plus ours, this duplicate
        window, and the limits that were given (others stay as they are)."""
        wanted = self.config()
        subjects = [str(s) for s in current.get("subjects") or []]
        merged: dict[str, Any] = {
            "subjects": subjects + [s for s in self.subjects if s not in subjects],
            "duplicate_window": wanted["duplicate_window"],
        }
        if self.max_age_s is not None:
            merged["max_age"] = wanted["max_age"]
        if self.max_bytes is not None:
            merged["max_bytes"] = wanted["max_bytes"]
        if self.replicas is not None:
            merged["num_replicas"] = wanted["num_replicas"]
        return merged


def nats_cli_command(spec: UplinkStreamSpec) -> str:
    """The ``nats stream add`` line that creates the same stream."""
    args = [
        "nats", "stream", "add", spec.name,
        "--subjects", spec.subjects[0],
        "--storage", "file", "--retention", "limits", "--discard", "old",
        "--dupe-window", _duration(spec.duplicate_window_s),
        "--max-age", _duration(spec.max_age_s) if spec.max_age_s else "0",
        "--max-bytes", str(-1 if spec.max_bytes is None else spec.max_bytes),
        "--replicas", str(spec.replicas or 1),
        "--defaults",
    ]  # fmt: skip
    return shlex.join(args)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``7d`` or plain seconds, as seconds; ValueError otherwise."""
    value = text.strip().lower()
    scale = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"'{text}' is not a duration (like 90s, 30m, 1h, 7d)") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"'{text}' is not a duration (like 90s, 30m, 1h, 7d)")
    return seconds


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{seconds:g}s"


async def ensure_uplink_stream(
    nats_client: Any, spec: UplinkStreamSpec, *, domain: str | None = None
) -> dict[str, Any]:
    """Create the hub stream, or update an existing one (see :meth:`UplinkStreamSpec.changes`).

    ``nats_client`` is connected to the hub with the fleet account's credentials;
    ``domain`` names the hub's JetStream domain when the API must be reached through one.
    Returns the stream's info as the server reports it. Raises :class:`ForwardError`.
    """
    api = f"$JS.{domain}.API" if domain else "$JS.API"

    async def call(subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await jetstream_api(nats_client, subject, body, api=api, who="the hub's JetStream",
                                   timeout=10)  # fmt: skip

    wanted = spec.config()
    info = await call(f"STREAM.INFO.{spec.name}")
    error = info.get("error")
    if isinstance(error, dict) and error.get("err_code") == _STREAM_NOT_FOUND:
        result = await call(f"STREAM.CREATE.{spec.name}", wanted)
    elif error is not None:
        raise ForwardError(f"cannot read stream {spec.name}: {_describe(error)}")
    else:
        found = info.get("config")
        current: dict[str, Any] = found if isinstance(found, dict) else {}
        merged = {**current, **spec.changes(current)}
        result = await call(f"STREAM.UPDATE.{spec.name}", merged) if merged != current else info
    if result.get("error") is not None:
        raise ForwardError(f"cannot create stream {spec.name}: {_describe(result['error'])}")
    return result


def _describe(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("description", error))
    return str(error)
