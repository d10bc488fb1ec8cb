"""Deployments: what ``fleet deploy`` records, and the admin operations over them.

A deployment (KV ``deploy.<name>``) says: run the actor ``actor_id`` from the module
``actor_ref`` (a ``nats-os://`` reference into the fleet's object store on the hub),
``count`` instances on every host whose labels include ``selector``, replacing at most
``max_unavailable`` hosts' instances at a time when the module changes. Each change bumps
``version``; undeploying keeps the record as a tombstone (``state: deleted``) so that a
device coming back from a long outage with the actor still cached is told to stop it.

The rollout's own records, written by the reconciler (:mod:`agent.fleet.rollout`):

* ``host.<host>`` — what a host last said about itself (labels, annotated actors, when);
* ``status.<name>.<host>`` — where the deployment stands on that host, with the lease of
  the reconciler acting on it;
* ``slot.<name>.<n>`` — the ``max_unavailable`` update slots.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import FleetRequestError
from agent.fleet import protocol
from agent.fleet.store import Conflict, FleetStore
from agent.identity.keys import KeyKind
from agent.lattice.refs import parse_ref

__all__ = [
    "ANNOTATION",
    "VERSION_ANNOTATION",
    "Deployment",
    "RolloutAdmin",
    "check_name",
    "labels_match",
    "object_name",
    "status_report",
]

ANNOTATION = "lattice-edge.deployment"
VERSION_ANNOTATION = "lattice-edge.version"
MAX_COUNT = 64
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HASH = re.compile(r"^[0-9A-F]{64}$")


def check_name(name: str) -> str:
    """A deployment name: lower-case letters, digits, ``-`` and ``_``, up to 63."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise FleetRequestError(
            f"'{protocol.printable(str(name))}' is not a deployment name "
            "(lower-case letters, digits, '-' and '_', starting with a letter or digit)"
        )
    return name


def object_name(sha256: str) -> str:
    """The object store name of a module: content-addressed, so it is uploaded once."""
    return f"sha256-{sha256}"


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """True when every selector entry is a label of exactly that value (empty: all)."""
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment record."""

    name: str
    version: int
    state: str  # "active" or "deleted"
    actor_id: str
    actor_ref: str
    sha256: str
    module_hash: str
    actor_name: str
    selector: dict[str, str]
    count: int
    max_unavailable: int
    created_at: int
    updated_at: int
    previous_actor_ids: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        """Whether hosts should run it (a deleted one is stopped everywhere)."""
        return self.state == "active"

    def to_json(self) -> dict[str, Any]:
        """The KV value."""
        data = asdict(self)
        data["previous_actor_ids"] = list(self.previous_actor_ids)
        return data

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Deployment | None:
        """A record read back; None when it is not a deployment (a damaged record)."""
        try:
            return cls(
                name=str(value["name"]),
                version=int(value["version"]),
                state=str(value["state"]),
                actor_id=str(value["actor_id"]),
                actor_ref=str(value["actor_ref"]),
                sha256=str(value["sha256"]),
                module_hash=str(value.get("module_hash", "")),
                actor_name=str(value.get("actor_name", "")),
                selector={str(k): str(v) for k, v in dict(value.get("selector") or {}).items()},
                count=int(value["count"]),
                max_unavailable=int(value["max_unavailable"]),
                created_at=int(value.get("created_at", 0)),
                updated_at=int(value.get("updated_at", 0)),
                previous_actor_ids=tuple(str(a) for a in value.get("previous_actor_ids", [])),
            )
        except (KeyError, TypeError, ValueError):
            return None


# --- admin operations (served by fleet serve) --------------------------------------------------


class RolloutAdmin:
    """``deploy``, ``undeploy``, ``deployments`` and ``status``, over the fleet's KV."""

    def __init__(
        self,
        store: FleetStore,
        *,
        bucket: str,
        js_domain: str,
        object_digest: Callable[[str], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.js_domain = js_domain
        self._object_digest = object_digest  # async: object name -> hex sha256 or None
        self.clock = clock

    def actor_ref(self, sha256: str) -> str:
        """The reference devices fetch the module with, through their leaf."""
        return f"nats-os://{self.bucket}/{object_name(sha256)}?domain={self.js_domain}"

    async def deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        """Record (or update) a deployment whose module is already in the object store."""
        f = protocol.admin_args(
            args,
            "deploy",
            {
                "name",
                "actor_id",
                "sha256",
                "module_hash",
                "actor_name",
                "selector",
                "count",
                "max_unavailable",
            },
        )
        name = check_name(f.string("name", limit=64))
        actor_id = f.key("actor_id", KeyKind.MODULE)
        sha256 = f.string("sha256", limit=64)
        module_hash = f.string("module_hash", limit=64, required=False)
        if not _SHA256.match(sha256) or (module_hash and not _HASH.match(module_hash)):
            raise FleetRequestError("deploy: 'sha256' and 'module_hash' must be hex digests")
        selector = f.labels("selector")
        count = f.integer("count", low=1, high=MAX_COUNT, default=1)
        max_unavailable = f.integer("max_unavailable", low=1, high=1000, default=1)
        actor_name = f.string("actor_name", limit=256, required=False)
        stored = await self._object_digest(object_name(sha256))
        if stored != sha256:
            raise FleetRequestError(
                f"deploy: the module {object_name(sha256)} is not in {self.bucket} "
                "(upload it first; 'fleet deploy' does)",
                code=404,
                reason="module-missing",
            )
        ref = self.actor_ref(sha256)
        parse_ref(ref)
        now = int(self.clock())
        key = f"deploy.{name}"
        for _attempt in range(5):
            record = await self.store.get(key)
            old = Deployment.from_json(record.value) if record is not None else None
            wanted = Deployment(
                name=name,
                version=1,
                state="active",
                actor_id=actor_id,
                actor_ref=ref,
                sha256=sha256,
                module_hash=module_hash,
                actor_name=actor_name,
                selector=selector,
                count=count,
                max_unavailable=max_unavailable,
                created_at=now,
                updated_at=now,
            )
            if old is not None:
                same = (old.active, old.sha256, old.selector, old.count, old.max_unavailable)
                if same == (True, sha256, selector, count, max_unavailable):
                    return {"deployment": old.to_json(), "changed": False}
                previous = list(old.previous_actor_ids)
                if old.actor_id != actor_id:
                    previous.append(old.actor_id)
                wanted = Deployment(
                    **{
                        **asdict(wanted),
                        "version": old.version + 1,
                        "created_at": old.created_at,
                        "previous_actor_ids": tuple(dict.fromkeys(previous))[-8:],
                    }
                )
            try:
                if record is None:
                    await self.store.create(key, wanted.to_json())
                else:
                    await self.store.update(key, wanted.to_json(), record.revision)
            except Conflict:
                continue
            return {"deployment": wanted.to_json(), "changed": True}
        raise FleetRequestError("deploy: changed concurrently; try again", code=409, reason="busy")

    async def undeploy(self, args: dict[str, Any]) -> dict[str, Any]:
        """Mark a deployment deleted: the reconciler stops it on every host."""
        f = protocol.admin_args(args, "undeploy", {"name"})
        name = check_name(f.string("name", limit=64))
        key = f"deploy.{name}"
        for _attempt in range(5):
            record = await self.store.get(key)
            old = Deployment.from_json(record.value) if record is not None else None
            if record is None or old is None:
                raise FleetRequestError(
                    f"there is no deployment '{name}'", code=404, reason="unknown-deployment"
                )
            if not old.active:
                return {"deployment": old.to_json(), "changed": False}
            gone = Deployment(
                **{
                    **asdict(old),
                    "state": "deleted",
                    "version": old.version + 1,
                    "updated_at": int(self.clock()),
                }
            )
            try:
                await self.store.update(key, gone.to_json(), record.revision)
            except Conflict:
                continue
            return {"deployment": gone.to_json(), "changed": True}
        raise FleetRequestError(
            "undeploy: changed concurrently; try again", code=409, reason="busy"
        )

    async def deployments(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every deployment record (deleted ones too, marked so)."""
        protocol.admin_args(args, "deployments", set())
        return {"deployments": [r.value for r in await self.store.scan("deploy")]}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Per host: running, pending, failed — and matching devices never seen."""
        f = protocol.admin_args(args, "status", {"name"})
        name = check_name(f.string("name", limit=64))
        record = await self.store.get(f"deploy.{name}")
        deployment = Deployment.from_json(record.value) if record is not None else None
        if deployment is None:
            raise FleetRequestError(
                f"there is no deployment '{name}'", code=404, reason="unknown-deployment"
            )
        statuses = {
            r.key.rsplit(".", 1)[-1]: r.value for r in await self.store.scan(f"status.{name}")
        }
        hosts = {r.key.split(".", 1)[1]: r.value for r in await self.store.scan("host")}
        devices = {r.key.split(".", 1)[1]: r.value for r in await self.store.scan("device")}
        return status_report(deployment, statuses, hosts, devices, now=int(self.clock()))


def status_report(
    deployment: Deployment,
    statuses: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, Mapping[str, Any]],
    devices: Mapping[str, Mapping[str, Any]],
    *,
    now: int,
) -> dict[str, Any]:
    """The ``fleet status`` report, from the KV records. Pure."""
    rows: dict[str, dict[str, Any]] = {}
    for host_id, status in statuses.items():
        host = hosts.get(host_id, {})
        rows[host_id] = {
            "host_id": host_id,
            "name": host.get("name") or devices.get(host_id, {}).get("name") or "",
            "state": status.get("state", "pending"),
            "instances": status.get("instances", 0),
            "sha256": status.get("sha256"),
            "version": status.get("version"),
            "since": status.get("since"),
            "error": status.get("error"),
            "reason": status.get("reason"),
        }
    if deployment.active:
        for host_id, host in hosts.items():
            if host_id not in rows and labels_match(host.get("labels") or {}, deployment.selector):
                rows[host_id] = {
                    "host_id": host_id,
                    "name": host.get("name", ""),
                    "state": "pending",
                    "instances": 0,
                    "sha256": None,
                    "version": None,
                    "since": host.get("last_seen"),
                    "error": None,
                    "reason": "not yet reached",
                }
        for host_id, device in devices.items():
            seen = host_id in hosts or host_id in rows
            if (
                not seen
                and not device.get("revoked")
                and labels_match(device.get("labels") or {}, deployment.selector)
            ):
                rows[host_id] = {
                    "host_id": host_id,
                    "name": device.get("name", ""),
                    "state": "never-seen",
                    "instances": 0,
                    "sha256": None,
                    "version": None,
                    "since": device.get("enrolled_at"),
                    "error": None,
                    "reason": "enrolled, never seen on the lattice",
                }
    ordered = sorted(rows.values(), key=lambda r: (r["state"], r["name"], r["host_id"]))
    return {"deployment": deployment.to_json(), "hosts": ordered, "now": now}
