"""CloudEvents of the wasmCloud 0.x lattice: the envelope and the ``data`` of each event. Pure.

Envelope (CloudEvents 1.0, JSON; OTP ``cloud_event.ex``, Rust host 0.82 ``event.rs``)::

    {"specversion": "1.0", "type": "com.wasmcloud.lattice.<name>", "source": <host id>,
     "id": <uuid4>, "time": <RFC 3339 UTC>, "datacontenttype": "application/json",
     "data": {…}}

published on ``wasmbus.evt.{lattice}`` (and ``.{name}``); the invocation events go to
``wasmbus.rpcevt.{lattice}`` (see :mod:`agent.lattice.subjects`). The ``data`` builders
follow the OTP host; where the Rust host 0.82 differs and both can be served without a
conflict, both field sets are present (each builder says what it chose).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent.errors import LatticeError
from agent.lattice.control_codec import HostInventory, LinkDefinition, LinkDelete, linkdef_id
from agent.lattice.invocation import WasmCloudEntity

__all__ = [
    "EVENT_TYPE_PREFIX",
    "actor_start_failed",
    "actor_started",
    "actor_stopped",
    "actor_update_failed",
    "actor_updated",
    "cloud_event",
    "host_heartbeat",
    "host_started",
    "host_stopped",
    "invocation_failed",
    "invocation_succeeded",
    "linkdef_deleted",
    "linkdef_set",
    "rfc3339",
]

EVENT_TYPE_PREFIX = "com.wasmcloud.lattice."


def rfc3339(moment: float) -> str:
    """``moment`` (epoch seconds) as RFC 3339 UTC with microseconds and a ``Z``."""
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def cloud_event(
    event_type: str,
    source_host_id: str,
    data: Mapping[str, Any],
    *,
    now: float | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Wrap ``data`` in a CloudEvents 1.0 envelope.

    ``event_type`` is the short name (``host_started``) or the full type; ``now`` (epoch
    seconds) defaults to the current time and ``event_id`` to a fresh uuid4.
    """
    name = event_type.removeprefix(EVENT_TYPE_PREFIX)
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        raise LatticeError(f"'{event_type}' is not a lattice event name")
    moment = datetime.now(UTC).timestamp() if now is None else now
    return {
        "specversion": "1.0",
        "type": EVENT_TYPE_PREFIX + name,
        "source": source_host_id,
        "id": str(uuid.uuid4()) if event_id is None else event_id,
        "time": rfc3339(moment),
        "datacontenttype": "application/json",
        "data": dict(data),
    }


# --- host ----------------------------------------------------------------------------------


def host_started(
    *, labels: Mapping[str, str], friendly_name: str, uptime_seconds: float, version: str
) -> dict[str, Any]:
    """``host_started``: ``{labels, friendly_name, uptime_seconds, version}`` (both hosts)."""
    return {
        "labels": dict(labels),
        "friendly_name": friendly_name,
        "uptime_seconds": int(uptime_seconds),
        "version": version,
    }


def host_stopped(*, labels: Mapping[str, str], reason: str = "") -> dict[str, Any]:
    """``host_stopped``: ``{labels}`` (OTP), plus Rust 0.82's ``reason`` when given."""
    data: dict[str, Any] = {"labels": dict(labels)}
    if reason:
        data["reason"] = reason
    return data


def host_heartbeat(inventory: HostInventory) -> dict[str, Any]:
    """``host_heartbeat`` serving both generations of consumers.

    The Rust host 0.82 sends its inventory as the heartbeat, the OTP host a summary whose
    ``actors`` is a map ``{public key: instance count}``. The two ``actors`` cannot be one
    field, so ``actors`` is the OTP map and every other inventory field (``host_id``,
    ``issuer``, ``labels``, ``friendly_name``, ``version``, ``uptime_seconds``,
    ``uptime_human``) is there too; each ``providers`` entry carries OTP's
    ``public_key``/``link_name``/``contract_id`` and the inventory's ``id``, ``image_ref``,
    ``name``, ``annotations`` and ``revision``.
    """
    inv = inventory.to_json()
    inv["actors"] = {a.id: len(a.instances) for a in inventory.actors}
    inv["providers"] = [{"public_key": p["id"], **p} for p in inv["providers"]]
    return inv


# --- actors --------------------------------------------------------------------------------


def actor_started(
    *,
    public_key: str,
    image_ref: str,
    instance_id: str,
    annotations: Mapping[str, str],
    claims: Mapping[str, Any],
    api_version: int = 0,
    host_id: str = "",
) -> dict[str, Any]:
    """``actor_started`` (OTP, one per instance).

    ``claims`` is ``{call_alias, caps, issuer, tags, name, version, revision,
    not_before_human, expires_human}``; ``api_version`` is the actor's
    ``__wasmbus_rpc_version`` (0 when absent). ``host_id`` (as Rust's ``actors_started``
    carries it) is added when given.
    """
    data: dict[str, Any] = {
        "public_key": public_key,
        "image_ref": image_ref,
        "api_version": api_version,
        "instance_id": instance_id,
        "annotations": dict(annotations),
        "claims": dict(claims),
    }
    if host_id:
        data["host_id"] = host_id
    return data


def actor_stopped(
    *, public_key: str, instance_id: str, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """``actor_stopped``: ``{public_key, instance_id, annotations}`` (OTP, per instance)."""
    return {
        "public_key": public_key,
        "instance_id": instance_id,
        "annotations": dict(annotations),
    }


def actor_start_failed(*, actor_ref: str, error: str) -> dict[str, Any]:
    """``actor_start_failed``: ``{actor_ref, error}``."""
    return {"actor_ref": actor_ref, "error": error}


def actor_updated(*, public_key: str, revision: int, instance_id: str) -> dict[str, Any]:
    """``actor_updated``: ``{public_key, revision, instance_id}``."""
    return {"public_key": public_key, "revision": revision, "instance_id": instance_id}


def actor_update_failed(
    *, public_key: str, revision: int, instance_id: str, reason: str
) -> dict[str, Any]:
    """``actor_update_failed``: ``{public_key, revision, instance_id, reason}``."""
    return {
        "public_key": public_key,
        "revision": revision,
        "instance_id": instance_id,
        "reason": reason,
    }


# --- links ---------------------------------------------------------------------------------


def linkdef_set(link: LinkDefinition) -> dict[str, Any]:
    """``linkdef_set``: ``{id, actor_id, provider_id, link_name, contract_id, values}``."""
    return link.to_json()


def linkdef_deleted(link: LinkDelete, provider_id: str = "") -> dict[str, Any]:
    """``linkdef_deleted``: the same fields as ``linkdef_set``; ``values`` are gone (empty).

    ``provider_id`` is whatever the deleted link pointed at (empty when unknown).
    """
    return {
        "id": linkdef_id(link.actor_id, link.contract_id, link.link_name),
        "actor_id": link.actor_id,
        "provider_id": provider_id,
        "link_name": link.link_name,
        "contract_id": link.contract_id,
        "values": {},
    }


# --- invocations (published on wasmbus.rpcevt.{lattice}) -------------------------------


def _invocation(
    source: WasmCloudEntity, dest: WasmCloudEntity, operation: str, size: int
) -> dict[str, Any]:
    return {
        "source": source.to_wire(),
        "dest": dest.to_wire(),
        "operation": operation,
        "bytes": size,
    }


def invocation_succeeded(
    *, source: WasmCloudEntity, dest: WasmCloudEntity, operation: str, size: int
) -> dict[str, Any]:
    """``invocation_succeeded``: ``{source, dest, operation, bytes}`` (OTP)."""
    return _invocation(source, dest, operation, size)


def invocation_failed(
    *,
    source: WasmCloudEntity,
    dest: WasmCloudEntity,
    operation: str,
    size: int,
    error: str = "",
) -> dict[str, Any]:
    """``invocation_failed``: the same fields, plus ``error`` when known."""
    data = _invocation(source, dest, operation, size)
    if error:
        data["error"] = error
    return data
