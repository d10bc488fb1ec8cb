"""The reconciler's decisions, one host at a time, against an in-memory KV with revisions
and a scripted lattice (the real thing runs in tests/integration/test_fleet_rollout.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from agent.fleet.deployments import ANNOTATION, Deployment, status_report
from agent.fleet.inventory import parse_inventory, sha_of
from agent.fleet.rollout import Reconciler
from agent.fleet.store import Conflict, Record
from agent.identity.keys import KeyKind, generate

HOST, OTHER = generate(KeyKind.SERVER).public_key, generate(KeyKind.SERVER).public_key
ACTOR, OLD_ACTOR = generate(KeyKind.MODULE).public_key, generate(KeyKind.MODULE).public_key
REF1 = "nats-os://B/sha256-" + "1" * 64 + "?domain=hub"
REF2 = "nats-os://B/sha256-" + "2" * 64 + "?domain=hub"


class MemoryStore:
    """The FleetStore operations the reconciler uses, with KV revision semantics."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[dict[str, Any], int]] = {}
        self.revision = 0

    async def get(self, key: str) -> Record | None:
        item = self.data.get(key)
        return Record(key, json.loads(json.dumps(item[0])), item[1]) if item else None

    async def create(self, key: str, value: dict[str, Any]) -> int:
        if key in self.data:
            raise Conflict(f"{key} exists")
        return await self.put(key, value)

    async def update(self, key: str, value: dict[str, Any], last: int) -> int:
        if key not in self.data or self.data[key][1] != last:
            raise Conflict(f"{key} changed")
        return await self.put(key, value)

    async def put(self, key: str, value: dict[str, Any]) -> int:
        self.revision += 1
        self.data[key] = (json.loads(json.dumps(value)), self.revision)
        return self.revision

    async def delete(self, key: str, last: int | None = None) -> None:
        if last is not None and (key not in self.data or self.data[key][1] != last):
            raise Conflict(f"{key} changed")
        self.data.pop(key, None)

    async def scan(self, prefix: str) -> list[Record]:
        return [r for k in sorted(self.data) if k.startswith(prefix + ".")
                if (r := await self.get(k))]  # fmt: skip


class Reply:
    def __init__(self, data: bytes) -> None:
        self.data = data


class Lattice:
    """Answers inventories from ``hosts`` and acknowledges commands, recording them."""

    def __init__(self) -> None:
        self.hosts: dict[str, dict[str, Any]] = {}
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse: set[str] = set()

    def runs(
        self, host: str, labels: dict[str, str], *actors: tuple[str, str, int, str | None]
    ) -> None:
        self.hosts[host] = {
            "host_id": host, "labels": labels, "friendly_name": host[:6],
            "actors": [
                {"id": actor, "image_ref": ref,
                 "instances": [{"annotations": {ANNOTATION: mark} if mark else {}}] * count}
                for actor, ref, count, mark in actors
            ],
        }  # fmt: skip

    async def request(self, subject: str, body: bytes, timeout: float) -> Reply:
        parts = subject.split(".")
        if parts[3] == "get" and parts[5] == "inv":
            if parts[4] not in self.hosts:
                raise TimeoutError
            return Reply(json.dumps(self.hosts[parts[4]]).encode())
        assert parts[3] == "cmd"
        self.commands.append((parts[4], parts[5], json.loads(body)))
        if parts[5] in self.refuse:
            return Reply(b'{"accepted": false, "error": "unsupported subject"}')
        return Reply(b'{"accepted": true, "error": ""}')

    def ops(self) -> list[tuple[str, str, int | None]]:
        return [(host, op, body.get("count")) for host, op, body in self.commands]


def deployment(**changes: Any) -> Deployment:
    base = Deployment(
        name="greet", version=1, state="active", actor_id=ACTOR, actor_ref=REF1, sha256="1" * 64,
        module_hash="", actor_name="greet", selector={"site": "a"}, count=1, max_unavailable=1,
        created_at=0, updated_at=0,
    )  # fmt: skip
    return replace(base, **changes)


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


def reconciler(
    store: MemoryStore, lattice: Lattice, clock: list[float], owner: str = "r1"
) -> Reconciler:
    r = Reconciler(lattice, store, lattice="default", owner=owner, lease_s=5, retry_max_s=60,
                   clock=lambda: clock[0])  # type: ignore[arg-type]  # fmt: skip
    r.deployments["greet"] = deployment()
    return r


async def test_a_matching_host_gets_one_start_and_then_counts_as_running(
    clock: list[float],
) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    lattice.runs(HOST, {"site": "a"})
    lattice.runs(OTHER, {"site": "b"})
    await r.reconcile_host(HOST)
    await r.reconcile_host(OTHER)
    assert lattice.ops() == [(HOST, "la", 1)]
    body = lattice.commands[0][2]
    assert body["actor_ref"] == REF1 and body["annotations"][ANNOTATION] == "greet"
    status = (await store.get(f"status.greet.{HOST}")).value  # type: ignore[union-attr]
    assert status["state"] == "pending" and status["owner"] == "r1"
    await r.reconcile_host(HOST)  # still starting: no second command within the lease
    assert len(lattice.commands) == 1
    lattice.runs(HOST, {"site": "a"}, (ACTOR, REF1, 1, "greet"))
    await r.reconcile_host(HOST)
    status = (await store.get(f"status.greet.{HOST}")).value  # type: ignore[union-attr]
    assert status["state"] == "running" and status["instances"] == 1
    assert status["sha256"] == "1" * 64 and len(lattice.commands) == 1


async def test_a_second_reconciler_leaves_a_leased_host_alone(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    first, second = reconciler(store, lattice, clock), reconciler(store, lattice, clock, "r2")
    lattice.runs(HOST, {"site": "a"})
    await first.reconcile_host(HOST)
    await second.reconcile_host(HOST)
    assert lattice.ops() == [(HOST, "la", 1)]
    clock[0] += 6  # the first one died: its lease runs out and the second takes over
    await second.reconcile_host(HOST)
    assert lattice.ops() == [(HOST, "la", 1), (HOST, "la", 1)]
    assert (await store.get(f"status.greet.{HOST}")).value["owner"] == "r2"  # type: ignore[union-attr]


async def test_too_many_instances_are_scaled_back(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    lattice.runs(HOST, {"site": "a"}, (ACTOR, REF1, 2, "greet"))
    await r.reconcile_host(HOST)
    assert lattice.ops() == [(HOST, "scale", 1)]


async def test_a_new_actor_key_starts_the_new_actor_then_stops_the_old(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    r.deployments["greet"] = deployment(version=2, actor_ref=REF2, previous_actor_ids=(OLD_ACTOR,))
    lattice.runs(HOST, {"site": "a"}, (OLD_ACTOR, REF1, 1, "greet"))
    await r.reconcile_host(HOST)
    assert lattice.ops() == [(HOST, "la", 1)]
    lattice.runs(HOST, {"site": "a"}, (OLD_ACTOR, REF1, 1, "greet"), (ACTOR, REF2, 1, "greet"))
    clock[0] += 6
    await r.reconcile_host(HOST)
    assert lattice.ops()[-1] == (HOST, "scale", 0)
    assert lattice.commands[-1][2]["actor_id"] == OLD_ACTOR


async def test_updates_take_one_slot_at_a_time(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    r.deployments["greet"] = deployment(version=2, actor_ref=REF2, sha256="2" * 64)
    for host in (HOST, OTHER):
        lattice.runs(host, {"site": "a"}, (ACTOR, REF1, 1, "greet"))
        await r.reconcile_host(host)
    assert lattice.ops() == [(HOST, "upd", None)]
    waiting = (await store.get(f"status.greet.{OTHER}")).value  # type: ignore[union-attr]
    assert waiting["reason"] == "waiting for an update slot"
    lattice.runs(HOST, {"site": "a"}, (ACTOR, REF2, 1, "greet"))
    await r.reconcile_host(HOST)  # done: the slot is free for the next host
    await r.reconcile_host(OTHER)
    assert lattice.ops() == [(HOST, "upd", None), (OTHER, "upd", None)]


async def test_a_host_that_refuses_upd_gets_stop_then_start(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    lattice.refuse = {"upd"}
    r = reconciler(store, lattice, clock)
    r.deployments["greet"] = deployment(version=2, actor_ref=REF2, sha256="2" * 64)
    lattice.runs(HOST, {"site": "a"}, (ACTOR, REF1, 1, "greet"))
    await r.reconcile_host(HOST)
    status = (await store.get(f"status.greet.{HOST}")).value  # type: ignore[union-attr]
    assert status["state"] == "failed" and status["error"].startswith("upd refused")
    clock[0] += 3
    await r.reconcile_host(HOST)
    assert lattice.ops() == [(HOST, "upd", None), (HOST, "scale", 0), (HOST, "la", 1)]
    assert lattice.commands[-1][2]["actor_ref"] == REF2


async def test_undeploy_stops_the_actor_and_forgets_the_host(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    r.deployments["greet"] = deployment(state="deleted", version=2)
    lattice.runs(HOST, {"site": "a"}, (ACTOR, REF1, 1, "greet"), (OLD_ACTOR, REF1, 1, "mine"))
    await r.reconcile_host(HOST)
    assert lattice.ops() == [(HOST, "scale", 0)] and lattice.commands[0][2]["actor_id"] == ACTOR
    lattice.runs(HOST, {"site": "a"}, (OLD_ACTOR, REF1, 1, "mine"))  # others' actors stay
    await r.reconcile_host(HOST)
    assert await store.get(f"status.greet.{HOST}") is None and len(lattice.commands) == 1


async def test_a_start_failure_is_recorded_and_retried_after_a_backoff(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    lattice.runs(HOST, {"site": "a"})
    await r.reconcile_host(HOST)
    event = {
        "type": "com.wasmcloud.lattice.actor_start_failed",
        "source": HOST,
        "data": {"actor_ref": REF1, "error": "issuer AX is not in trusted_issuers"},
    }
    await r._on_event(Reply(json.dumps(event).encode()))
    await r.reconcile_host(HOST)
    status = (await store.get(f"status.greet.{HOST}")).value  # type: ignore[union-attr]
    assert status["state"] == "failed" and "trusted_issuers" in status["error"]
    assert status["attempts"] == 1 and status["retry_at"] == clock[0] + 2
    await r.reconcile_host(HOST)
    assert len(lattice.commands) == 1  # backing off
    clock[0] += 3
    await r.reconcile_host(HOST)
    assert len(lattice.commands) == 2


async def test_an_unreachable_host_is_pending_since_it_went_away(clock: list[float]) -> None:
    store, lattice = MemoryStore(), Lattice()
    r = reconciler(store, lattice, clock)
    lattice.runs(HOST, {"site": "a"}, (ACTOR, REF1, 1, "greet"))
    await r.reconcile_host(HOST)
    del lattice.hosts[HOST]
    clock[0] += 10
    await r.reconcile_host(HOST)
    status = (await store.get(f"status.greet.{HOST}")).value  # type: ignore[union-attr]
    assert (status["state"], status["reason"], status["since"]) == (
        "pending",
        "host unreachable",
        1010,
    )


def test_forged_or_foreign_events_are_ignored() -> None:
    lattice = Lattice()
    r = Reconciler(lattice, MemoryStore(), lattice="default", owner="r", lease_s=5,  # type: ignore[arg-type]
                   retry_max_s=60)  # fmt: skip
    import asyncio

    for body in (b"not json", b"[]", json.dumps({"source": "N-nope", "type": "x"}).encode(),
                 json.dumps({"source": HOST, "type": "other.kind"}).encode(),
                 b"x" * 300_000):  # fmt: skip
        asyncio.run(r._on_event(Reply(body)))
    assert r._queue.empty()


def test_inventories_of_another_host_are_refused() -> None:
    raw = json.dumps({"host_id": OTHER, "labels": {}}).encode()
    with pytest.raises(ValueError, match="not this host"):
        parse_inventory(HOST, raw)
    instance = {"annotations": {ANNOTATION: "g"}}
    inventory = {
        "host_id": HOST,
        "labels": {"site": "a"},
        "actors": [{"id": ACTOR, "image_ref": REF1, "instances": [instance]}, "junk", {"no": 1}],
    }
    labels, _, actors = parse_inventory(HOST, json.dumps(inventory).encode())
    assert labels == {"site": "a"} and actors[ACTOR].deployment == "g" and len(actors) == 1
    assert sha_of(REF1) == "1" * 64 and sha_of("file:///x.wasm") is None


def test_status_report_lists_never_seen_devices_that_match() -> None:
    report = status_report(
        deployment(),
        {HOST: {"state": "running", "instances": 1, "sha256": "1" * 64, "since": 5}},
        {HOST: {"name": "pi-1", "labels": {"site": "a"}}},
        {OTHER: {"name": "pi-2", "labels": {"site": "a"}, "enrolled_at": 3, "revoked": False},
         "NREVOKED": {"name": "pi-3", "labels": {"site": "a"}, "revoked": True}},
        now=10,
    )  # fmt: skip
    rows = {row["host_id"]: row["state"] for row in report["hosts"]}
    assert rows == {HOST: "running", OTHER: "never-seen"}
