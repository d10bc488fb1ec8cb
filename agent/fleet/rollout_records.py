"""The rollout's own KV records: what hosts said, where each deployment stands on each
host (with the lease of the reconciler acting on it), and the update slots.

* ``host.<host>`` — labels, annotated actors, when it was last seen or found unreachable;
* ``status.<name>.<host>`` — ``running`` / ``pending`` / ``updating`` / ``failed``, since when,
  the host's error text, attempts and the next retry, and the lease (owner, until when);
* ``slot.<name>.<n>`` — one of ``max_unavailable`` slots, held by the host being updated.

Leases and slots are taken with a KV ``create`` or an ``update`` against the revision read,
so of two reconcilers only one gets each; they expire, so a reconciler killed with -9
blocks nothing for longer than its lease.
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.fleet.deployments import Deployment
from agent.fleet.inventory import ActorSeen
from agent.fleet.store import Conflict, FleetStore, Record

__all__ = ["HOST_REFRESH_S", "UNREACHABLE_PROBE_S", "RolloutRecords"]

HOST_REFRESH_S = 60
UNREACHABLE_PROBE_S = 30


class RolloutRecords:
    """Reads and writes the rollout's records for one reconciler (``owner``)."""

    def __init__(self, store: FleetStore, *, owner: str, lease_s: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s

    async def status(self, deployment: Deployment, host_id: str) -> Record | None:
        """The status of ``deployment`` on ``host_id``."""
        return await self.store.get(f"status.{deployment.name}.{host_id}")

    async def delete_status(self, status: Record) -> None:
        """Forget a status (the deployment is gone from the host)."""
        await self.store.delete(status.key, last=status.revision)

    async def save_host(
        self,
        host_id: str,
        name: str,
        labels: dict[str, str],
        actors: dict[str, ActorSeen],
        now: float,
    ) -> None:
        """Record what a host said; rewritten when it changed or once a minute."""
        key = f"host.{host_id}"
        value = {
            "host_id": host_id,
            "name": name,
            "labels": labels,
            "actors": {
                a.actor_id: {"image_ref": a.image_ref, "count": a.count, "deployment": a.deployment}
                for a in actors.values()
            },
            "unreachable_since": None,
        }
        record = await self.store.get(key)
        old = dict(record.value) if record is not None else {}
        last_seen = float(old.pop("last_seen", 0) or 0)
        old.pop("probed_at", None)
        if old != value or now - last_seen > HOST_REFRESH_S:
            await self.store.put(key, {**value, "last_seen": int(now), "probed_at": int(now)})

    async def unreachable(self, host_id: str, now: float) -> int | None:
        """Note that a known host did not answer; since when (None for an unknown host)."""
        record = await self.store.get(f"host.{host_id}")
        if record is None:
            return None
        since = int(record.value.get("unreachable_since") or now)
        if (
            record.value.get("unreachable_since") is None
            or now - float(record.value.get("probed_at") or 0) > UNREACHABLE_PROBE_S
        ):
            await self.store.put(
                record.key, {**record.value, "unreachable_since": since, "probed_at": int(now)}
            )
        return since

    async def write_status(
        self,
        status: Record | None,
        deployment: Deployment,
        host_id: str,
        state: str,
        now: float,
        *,
        lease: bool,
        reason: str | None = None,
        since: float | None = None,
        **extra: Any,
    ) -> None:
        """Write the status record; a lease (``lease=True``) is always written, against the
        revision read, so of two reconcilers only one gets it (the other sees Conflict)."""
        old = status.value if status is not None else {}
        value = {
            "host_id": host_id,
            "state": state,
            "version": deployment.version,
            "since": int(since or (old.get("since") if old.get("state") == state else now) or now),
            "reason": reason,
            "error": extra.pop("error", None),
            "attempts": extra.pop("attempts", old.get("attempts", 0)),
            "retry_at": extra.pop("retry_at", 0),
            "owner": self.owner if lease else None,
            "lease_until": now + self.lease_s if lease else 0,
            "instances": extra.pop("instances", old.get("instances", 0)),
            "sha256": extra.pop("sha256", old.get("sha256")),
            **extra,
        }
        comparable = {k: v for k, v in value.items() if k not in ("since", "lease_until")}
        if (
            not lease
            and status is not None
            and comparable == {k: v for k, v in old.items() if k not in ("since", "lease_until")}
        ):
            return
        key = f"status.{deployment.name}.{host_id}"
        if status is None:
            await self.store.create(key, value)
        else:
            await self.store.update(key, value, status.revision)

    async def take_slot(self, deployment: Deployment, host_id: str, now: float) -> bool:
        """Hold one of the deployment's update slots for ``host_id``; False if all are held."""
        lease = now + 2 * self.lease_s
        mine = {
            "host_id": host_id,
            "version": deployment.version,
            "owner": self.owner,
            "lease_until": lease,
        }
        for index in range(deployment.max_unavailable):
            key = f"slot.{deployment.name}.{index}"
            record = await self.store.get(key)
            try:
                if record is None:
                    await self.store.create(key, mine)
                    return True
                held = record.value
                if (
                    held.get("host_id") == host_id
                    or float(held.get("lease_until") or 0) < now
                    or held.get("version") != deployment.version
                ):
                    await self.store.update(key, mine, record.revision)
                    return True
            except Conflict:
                continue
        return False

    async def release_slot(self, deployment: Deployment, host_id: str) -> bool:
        """Give back the slot ``host_id`` holds, if any; True when one was released."""
        released = False
        for index in range(deployment.max_unavailable):
            key = f"slot.{deployment.name}.{index}"
            record = await self.store.get(key)
            if record is not None and record.value.get("host_id") == host_id:
                with contextlib.suppress(Conflict):
                    await self.store.delete(key, last=record.revision)
                    released = True
        return released
