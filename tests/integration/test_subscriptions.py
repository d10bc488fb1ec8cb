"""Messages on the device reach actors through ``SUBSCRIPTION`` links (in-process hosts).

The actor is wasmCloud's own ``echo_messaging`` (third-party fixture): on
``MessageSubscriber.HandleMessage`` it publishes ``reply: <body>`` to the message's
``replyTo`` through ``wasmcloud:messaging``, so a NATS request to a subscribed subject is
answered by the actor: request/reply through a real actor in real wasm3.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import nats.errors
import pytest
from lattice_testing import agent_seed, free_port

from agent.config import Config, load_config
from agent.host import Host
from agent.identity.keys import KeyKind, KeyPair, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient, connect
from agent.launch import run_host

pytestmark = pytest.mark.integration

ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"
ECHO_ACTOR = "MDJ5BWS6JXSWOZL2ZENW2D4FBSHQ5ZMFGEGJB33TLKYKMXTLLAXINU36"
NATS_PROVIDER = "VADNMSIML2XGO2X4TPIONTIC55R2UUQGPPDZPAVSC2QD7E76CR77SPW7"
GUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "guests"
CTL = "wasmbus.ctl.default"
MESSAGING = "wasmcloud:messaging"


def write_config(root: Path, third_party: Path, issuer: KeyPair, extra: str = "") -> Config:
    path = root / "agent.toml"
    path.write_text(
        f"[host]\ndata_dir = '{root / 'data'}'\nprofile = 'generic-x86_64'\n"
        f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
        + extra
        + f"[trust]\ntrusted_issuers = ['{ECHO_ISSUER}', '{issuer.public_key}']\n"
        f"[actors]\nfile_roots = ['{third_party}', '{root / 'actors'}']\n"
        "[budgets]\nheartbeat_interval_s = 0.5\n"
    )
    return load_config(path, env={})


class Device:
    """A running host, an agent-user lattice client and an anonymous local app."""

    def __init__(self, host: Host, client: LatticeClient, app: Any, third_party: Path) -> None:
        self.host = host
        self.client = client
        self.app = app  # what a local process presenting no credentials can do
        self.third_party = third_party

    @property
    def host_id(self) -> str:
        return self.host.keys.host_id

    async def start_echo(self) -> str:
        ref = f"file://{self.third_party / 'echo_messaging_v0.9.0.wasm'}"
        started = await self.client.start_actor(self.host_id, ref, 1, timeout=20)
        assert started["public_key"] == ECHO_ACTOR
        return ECHO_ACTOR

    async def put_link(self, actor: str, values: dict[str, str], **extra: str) -> dict[str, Any]:
        link = {"actor_id": actor, "contract_id": MESSAGING, "provider_id": NATS_PROVIDER,
                "values": values, **extra}  # fmt: skip
        reply: dict[str, Any] = await self.client.request(f"{CTL}.linkdefs.put", link)
        return reply

    async def del_link(self, actor: str) -> dict[str, Any]:
        gone = {"actor_id": actor, "contract_id": MESSAGING, "link_name": "default"}
        reply: dict[str, Any] = await self.client.request(f"{CTL}.linkdefs.del", gone)
        return reply

    async def health(self) -> dict[str, Any]:
        reply: dict[str, Any] = await self.client.request(
            f"lattice-edge.host.{self.host_id}.health"
        )
        return reply

    async def subscriptions(self) -> list[dict[str, Any]]:
        subscriptions: list[dict[str, Any]] = (await self.health())["subscriptions"]
        return subscriptions

    async def wait(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The subscriptions report, once ``predicate`` holds for it."""
        deadline = time.monotonic() + timeout
        while True:
            report = await self.subscriptions()
            if predicate(report):
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout} s: {report!r}")
            await asyncio.sleep(0.05)


@pytest.fixture
def issuer() -> KeyPair:
    return generate(KeyKind.ACCOUNT)


async def _device(config: Config, third_party: Path) -> AsyncIterator[Device]:
    async with run_host(config) as host:
        seed = agent_seed(config.host.data_dir)
        async with connect(host.client_url, seed=seed) as client:
            app = await nats.connect(host.client_url)
            try:
                yield Device(host, client, app, third_party)
            finally:
                await app.close()


@pytest.fixture
async def device(tmp_path: Path, third_party_dir: Path, issuer: KeyPair) -> AsyncIterator[Device]:
    config = write_config(tmp_path, third_party_dir, issuer)
    async for running in _device(config, third_party_dir):
        yield running


async def test_subscribed_messages_reach_the_actor_and_its_replies_come_back(
    device: Device,
) -> None:
    actor = await device.start_echo()
    values = {"SUBSCRIPTION": "echo.in, sensors.*.temp|workers"}
    assert (await device.put_link(actor, values))["accepted"] is True

    # A local app (no credentials) asks; the actor answers through wasmcloud:messaging.
    answer = await device.app.request("echo.in", b"hello", timeout=10)
    assert answer.data == b"reply: hello"
    answer = await device.app.request("sensors.kitchen.temp", b"21.5", timeout=10)
    assert answer.data == b"reply: 21.5"
    # Without replyTo the actor handles the message and publishes nothing.
    await device.app.publish("sensors.hall.temp", b"19.0")
    await device.app.flush()

    (entry,) = await device.wait(lambda s: s and s[0].get("delivered") == 3)
    assert entry["state"] == "subscribed" and entry["actor_id"] == actor
    assert entry["subjects"] == ["echo.in", "sensors.*.temp|workers"]
    assert entry["dropped"] == 0 and entry["errors"] == 0
    # The link says which provider wasmCloud would use; on the device the host serves it.
    links = (await device.client.request(f"{CTL}.get.links"))["links"]
    assert links[0]["values"] == values


async def test_deleting_the_link_stops_deliveries(device: Device) -> None:
    actor = await device.start_echo()
    assert (await device.put_link(actor, {"SUBSCRIPTION": "echo.in"}))["accepted"]
    assert (await device.app.request("echo.in", b"one", timeout=10)).data == b"reply: one"
    assert (await device.del_link(actor))["accepted"] is True
    with pytest.raises(nats.errors.NoRespondersError):  # nobody subscribes any more
        await device.app.request("echo.in", b"two", timeout=2)
    assert await device.subscriptions() == []
    # The actor itself still runs and answers RPC.
    health = await device.client.invoke(
        actor, "Actor.HealthRequest", msgpack.packb({}),
        cluster_key=device.host.keys.cluster, host_id=device.host_id,
    )  # fmt: skip
    assert msgpack.unpackb(health.response) == {"healthy": True}


async def test_subscriptions_come_back_after_a_restart(
    tmp_path: Path, third_party_dir: Path, issuer: KeyPair
) -> None:
    config = write_config(tmp_path, third_party_dir, issuer)
    async for first in _device(config, third_party_dir):
        actor = await first.start_echo()
        assert (await first.put_link(actor, {"SUBSCRIPTION": "echo.in"}))["accepted"]
        assert (await first.app.request("echo.in", b"before", timeout=10)).data == b"reply: before"
    async for second in _device(config, third_party_dir):
        assert (await second.app.request("echo.in", b"after", timeout=10)).data == b"reply: after"
        (entry,) = await second.wait(lambda s: s and s[0].get("delivered") == 1)
        assert entry["state"] == "subscribed"


def signed_guest(device: Device, issuer: KeyPair, name: str, caps: tuple[str, ...]) -> str:
    """A project guest signed by the test's issuer with ``caps``; returns its reference."""
    source = (GUESTS / f"{name}.wasm").read_bytes()
    signed, _ = sign_module(source, issuer, name, caps=caps)
    root = device.host.config.actors.file_roots[1]
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}-{'-'.join(c.replace(':', '_') for c in caps) or 'none'}.wasm"
    path.write_bytes(signed)
    return f"file://{path}"


async def test_an_actor_without_the_messaging_claim_is_refused(
    device: Device, issuer: KeyPair
) -> None:
    started = await device.client.start_actor(
        device.host_id, signed_guest(device, issuer, "echo", ()), 1, timeout=20
    )
    actor = started["public_key"]
    refused = await device.put_link(actor, {"SUBSCRIPTION": "echo.in"})
    assert refused["accepted"] is False
    assert "missing capability claim" in refused["error"]
    assert (await device.client.request(f"{CTL}.get.links"))["links"] == []
    with pytest.raises(nats.errors.NoRespondersError):
        await device.app.request("echo.in", b"x", timeout=2)


async def test_a_link_waits_for_its_actor_and_never_delivers_without_the_claim(
    device: Device, issuer: KeyPair
) -> None:
    key = generate(KeyKind.MODULE)
    # Put before the actor runs: stored, waiting.
    assert (await device.put_link(key.public_key, {"SUBSCRIPTION": "echo.in"}))["accepted"]
    (entry,) = await device.subscriptions()
    assert entry["state"] == "waiting for the actor"
    source = (GUESTS / "echo.wasm").read_bytes()
    signed, _ = sign_module(source, issuer, "mute", module_key=key)  # no claims at all
    path = device.host.config.actors.file_roots[1] / "mute.wasm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(signed)
    await device.client.start_actor(device.host_id, f"file://{path}", 1, timeout=20)
    (entry,) = await device.wait(lambda s: s and s[0]["state"].startswith("refused"))
    assert "lacks the wasmcloud:messaging claim" in entry["state"]
    with pytest.raises(nats.errors.NoRespondersError):
        await device.app.request("echo.in", b"x", timeout=2)


@pytest.mark.parametrize(
    ("subscription", "reason"),
    [
        ("$SYS.>", "reserved (prefix '$')"),
        ("$JS.API.>", "reserved (prefix '$')"),
        ("wasmbus.rpc.default.>", "reserved (prefix 'wasmbus.')"),
        ("wasmbus", "reserved (prefix 'wasmbus.')"),
        ("_INBOX_LE.>", "reserved"),
        (">", "starts with a wildcard"),
        ("*.rpc.default.>", "starts with a wildcard"),
        ("a.>.b", "'>' may only be the last token"),
        ("a..b", "empty token"),
        ("ok.subject|bad group", "queue group"),
    ],
)
async def test_reserved_or_malformed_subjects_are_refused_at_put(
    device: Device, subscription: str, reason: str
) -> None:
    actor = await device.start_echo()
    refused = await device.put_link(actor, {"SUBSCRIPTION": f"echo.in,{subscription}"})
    assert refused["accepted"] is False
    assert reason in refused["error"]
    assert (await device.client.request(f"{CTL}.get.links"))["links"] == []


async def test_actor_errors_are_counted_and_the_subscription_carries_on(
    device: Device, issuer: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    started = await device.client.start_actor(
        device.host_id, signed_guest(device, issuer, "unreachable", (MESSAGING,)), 1, timeout=20
    )
    actor = started["public_key"]
    assert (await device.put_link(actor, {"SUBSCRIPTION": "boom.>"}))["accepted"]
    for index in range(30):
        await device.app.publish(f"boom.{index}", b"x")
    await device.app.flush()
    (entry,) = await device.wait(lambda s: s and s[0].get("errors") == 30)
    assert entry["delivered"] == 0 and "unreachable" in (entry["last_error"] or "").lower()
    failures = [r for r in caplog.records if "failed to handle a message" in r.getMessage()]
    assert 1 <= len(failures) < 30  # rate-limited
    await device.client.ping(wait=0.5)  # the host is fine


async def test_a_flood_leaves_the_agent_responsive_and_counts_drops(device: Device) -> None:
    actor = await device.start_echo()
    assert (await device.put_link(actor, {"SUBSCRIPTION": "flood.>"}))["accepted"]
    total = 10_000
    body = b"x" * 64
    for index in range(total):
        await device.app.publish(f"flood.{index % 10}", body)  # no replyTo: no answers
    await device.app.flush()
    # Responsive while the backlog drains: the control interface and RPC answer.
    hosts = await device.client.ping(wait=0.5)
    assert [h["id"] for h in hosts] == [device.host_id]
    health = await device.client.invoke(
        actor, "Actor.HealthRequest", msgpack.packb({}),
        cluster_key=device.host.keys.cluster, host_id=device.host_id, timeout=10,
    )  # fmt: skip
    assert msgpack.unpackb(health.response) == {"healthy": True}

    def settled(s: list[dict[str, Any]]) -> bool:
        return (
            bool(s)
            and s[0]["received"] == total
            and s[0]["queued"] == 0
            and (s[0]["delivered"] + s[0]["dropped"] == total)
        )

    (entry,) = await device.wait(settled, timeout=60)
    assert entry["dropped"] > 0, entry  # the bounded queue overflowed, oldest first
    assert entry["delivered"] + entry["dropped"] == total
    assert entry["errors"] == 0
    # And it still delivers afterwards.
    assert (await device.put_link(actor, {"SUBSCRIPTION": "flood.>,echo.in"}))["accepted"]
    assert (await device.app.request("echo.in", b"after", timeout=10)).data == b"reply: after"
