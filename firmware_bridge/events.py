"""What the bridge publishes: telemetry messages and the ``data`` of its CloudEvents. Pure.

Telemetry goes to ``lattice-edge.telemetry.{host}.{device}.{group}`` as
``{"device", "group", "fields": {name: int}, "ts"}`` (``ts``: epoch seconds, milliseconds
precision). The update events are CloudEvents on ``wasmbus.evt.{lattice}`` built with
:func:`agent.lattice.events.cloud_event`; each ``data`` carries ``device`` and
``update_id`` so a watcher can follow one update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "FIRMWARE_PREFIX",
    "TELEMETRY_PREFIX",
    "device_subject",
    "list_subject",
    "telemetry",
    "telemetry_subject",
    "update_failed",
    "update_progress",
    "update_started",
    "update_succeeded",
]

FIRMWARE_PREFIX = "lattice-edge.firmware"
TELEMETRY_PREFIX = "lattice-edge.telemetry"


def device_subject(host_id: str, device: str) -> str:
    """The endpoint group of one MCU: ``lattice-edge.firmware.{host}.{device}``."""
    return f"{FIRMWARE_PREFIX}.{host_id}.{device}"


def list_subject(host_id: str) -> str:
    """The host's device list: ``lattice-edge.firmware.{host}.list``."""
    return f"{FIRMWARE_PREFIX}.{host_id}.list"


def telemetry_subject(host_id: str, device: str, group: str) -> str:
    return f"{TELEMETRY_PREFIX}.{host_id}.{device}.{group}"


def telemetry(device: str, group: str, fields: Mapping[str, int], ts: float) -> dict[str, Any]:
    return {"device": device, "group": group, "fields": dict(fields), "ts": round(ts, 3)}


def update_started(
    *, device: str, update_id: str, image: Mapping[str, Any], confirm: bool, key: str
) -> dict[str, Any]:
    """``firmware_update_started``: the verified image (version, size, hash) and the key."""
    return {"device": device, "update_id": update_id, "image": dict(image), "confirm": confirm,
            "trusted_key": key}  # fmt: skip


def update_progress(
    *, device: str, update_id: str, step: str, offset: int, size: int
) -> dict[str, Any]:
    """``firmware_update_progress`` (rate-limited): the step, and bytes the device holds."""
    percent = offset * 100 // size if size else 0
    return {"device": device, "update_id": update_id, "step": step, "offset": offset,
            "size": size, "percent": percent}  # fmt: skip


def update_succeeded(
    *, device: str, update_id: str, version: str, image_hash: str, confirmed: bool,
    resumed_from: int, seconds: float, message: str,
) -> dict[str, Any]:  # fmt: skip
    """``firmware_update_succeeded``."""
    return {"device": device, "update_id": update_id, "version": version, "hash": image_hash,
            "confirmed": confirmed, "resumed_from": resumed_from, "seconds": seconds,
            "message": message}  # fmt: skip


def update_failed(
    *, device: str, update_id: str, outcome: str, reason: str, step: str
) -> dict[str, Any]:
    """``firmware_update_failed``: ``outcome`` is refused, failed, rolled_back or lost."""
    return {"device": device, "update_id": update_id, "outcome": outcome, "reason": reason,
            "step": step}  # fmt: skip
