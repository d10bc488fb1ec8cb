"""The subscription manager's policies with fakes for NATS and the actors (pure logic only;
the real thing runs in tests/integration/test_subscriptions.py and test_mqtt.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from agent.background import Background
from agent.capabilities import subscriptions as subs
from agent.capabilities.subscriptions import HANDLE_MESSAGE, LinkState, Subscriptions
from agent.errors import GuestError
from agent.lattice.control_codec import LinkDefinition
from agent.lattice.hostcalls import LinkTable

ACTOR = "M" + "A" * 55


@dataclass
class FakeActor:
    caps: tuple[str, ...] = ("wasmcloud:messaging",)


@dataclass
class FakeRegistry:
    """Records HandleMessage bodies; each invoke waits for ``gate`` when it is set."""

    actors: dict[str, FakeActor] = field(default_factory=lambda: {ACTOR: FakeActor()})
    bodies: list[bytes] = field(default_factory=list)
    gate: asyncio.Event | None = None
    fail: bool = False

    def get(self, actor_id: str) -> FakeActor | None:
        return self.actors.get(actor_id)

    async def invoke(self, actor_id: str, operation: str, payload: bytes) -> None:
        assert operation == HANDLE_MESSAGE
        if self.gate is not None:
            await self.gate.wait()
        self.bodies.append(msgpack.unpackb(payload)["body"])
        if self.fail:
            raise GuestError("boom")


@dataclass
class FakeMsg:
    subject: str
    data: bytes
    reply: str = ""


class FakeSub:
    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


class FakeNats:
    def __init__(self) -> None:
        self.callbacks: dict[str, Any] = {}
        self.refuse = False

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None) -> FakeSub:
        if self.refuse:
            raise ConnectionError("nats: connection closed")
        self.callbacks[subject] = cb
        return FakeSub(subject)

    async def deliver(self, pattern: str, body: bytes, subject: str = "a.x") -> None:
        """A message on ``subject`` to the subscription for ``pattern``."""
        await self.callbacks[pattern](FakeMsg(subject, body))


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    async with asyncio.TaskGroup() as tasks:
        runner = Background(tasks)
        yield runner
        runner.cancel_all()


def link(subscription: str = "a.>") -> LinkDefinition:
    return LinkDefinition(
        ACTOR, "wasmcloud:messaging", "VNATS", values={"SUBSCRIPTION": subscription}
    )


async def settle(registry: FakeRegistry, count: int) -> None:
    for _ in range(200):
        if len(registry.bodies) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {len(registry.bodies)} of {count} delivered")


async def test_a_full_queue_drops_the_oldest(
    background: Background, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subs, "QUEUE_LIMIT", 8)
    registry = FakeRegistry(gate=asyncio.Event())
    nats = FakeNats()
    table = LinkTable([link()])
    manager = Subscriptions(nats, registry, table, background)  # type: ignore[arg-type]
    await manager.sync()
    held = subs.CONCURRENCY
    for index in range(held):
        await nats.deliver("a.>", str(index).encode())
    await asyncio.sleep(0.01)  # each worker takes one and waits in the actor
    for index in range(held, 100):
        await nats.deliver("a.>", str(index).encode())
    registry.gate.set()  # type: ignore[union-attr]
    await settle(registry, held + 8)
    await asyncio.sleep(0.01)
    (entry,) = manager.health()
    assert entry["received"] == 100 and entry["delivered"] == held + 8
    assert entry["dropped"] == 100 - held - 8
    # The queue kept the newest eight: everything in between was dropped, oldest first.
    expected = [*range(held), *range(92, 100)]
    assert sorted(int(b) for b in registry.bodies) == expected


async def test_errors_are_counted_and_the_link_goes_on(background: Background) -> None:
    registry = FakeRegistry(fail=True)
    nats = FakeNats()
    manager = Subscriptions(nats, registry, LinkTable([link()]), background)  # type: ignore[arg-type]
    await manager.sync()
    for index in range(5):
        await nats.deliver("a.>", b"%d" % index)
    await settle(registry, 5)
    await asyncio.sleep(0.01)
    (entry,) = manager.health()
    assert entry["errors"] == 5 and entry["delivered"] == 0 and "boom" in entry["last_error"]


async def test_a_failed_subscribe_is_reported_and_retried(background: Background) -> None:
    registry = FakeRegistry()
    nats = FakeNats()
    nats.refuse = True
    manager = Subscriptions(nats, registry, LinkTable([link()]), background)  # type: ignore[arg-type]
    await manager.sync()  # never raises
    (entry,) = manager.health()
    assert entry["state"] == LinkState.FAILED.value and "connection closed" in entry["error"]
    nats.refuse = False
    await manager.sync()
    (entry,) = manager.health()
    assert entry["state"] == LinkState.SUBSCRIBED.value and "error" not in entry


async def test_a_stopped_actor_gets_nothing_more(background: Background) -> None:
    registry = FakeRegistry()
    nats = FakeNats()
    table = LinkTable([link()])
    manager = Subscriptions(nats, registry, table, background)  # type: ignore[arg-type]
    await manager.sync()
    callback = nats.callbacks["a.>"]
    await nats.deliver("a.>", b"one")
    await settle(registry, 1)
    del registry.actors[ACTOR]
    await manager.sync()
    (entry,) = manager.health()
    assert entry["state"] == LinkState.WAITING.value
    await callback(FakeMsg("a.x", b"late"))  # a message nats-py had already queued
    await asyncio.sleep(0.01)
    assert registry.bodies == [b"one"]


async def test_changing_the_subjects_resubscribes(background: Background) -> None:
    registry = FakeRegistry()
    nats = FakeNats()
    table = LinkTable([link("a.>")])
    manager = Subscriptions(nats, registry, table, background)  # type: ignore[arg-type]
    await manager.sync()
    table.put(link("b.*,c"))
    await manager.sync()
    assert sorted(nats.callbacks) == ["a.>", "b.*", "c"]
    (entry,) = manager.health()
    assert entry["subjects"] == ["b.*", "c"]
    await manager.close()
    assert manager.health() == []
