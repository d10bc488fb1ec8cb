"""The device as a wasmCloud 0.x host, seen from the cloud: a hub in operator mode (the
NGS stand-in) and a real agent whose leaf node is bridged to it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from lattice_testing import AgentProcess, Hub, agent_seed, alive, run_cli, wait_until

from agent.identity.keys import KeyKind, KeyPair, generate
from agent.lattice.client import LatticeClient
from agent.lattice.invocation import InvocationResponse, WasmCloudEntity, new_invocation
from agent.runtime.demo import DEMO_ISSUER

pytestmark = pytest.mark.integration

ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"
ECHO_ACTOR = "MDJ5BWS6JXSWOZL2ZENW2D4FBSHQ5ZMFGEGJB33TLKYKMXTLLAXINU36"
GUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "guests"
PROXY = GUESTS / "proxy.wasm"
PROXY_ACTOR = "MAWDQAQVDL5KYXNZACWIJ7JWABG3TG2I5HIROH4VF7JNZD2EELTDJCC5"


@dataclasses.dataclass
class Device:
    config: Path
    data: Path
    host_id: str
    client_url: str
    agent: AgentProcess


def setup_device(
    tmp_path: Path,
    ports: dict[str, int],
    agent_factory: type[AgentProcess],
    *,
    hub: Hub | None,
    cluster_issuers: tuple[str, ...] = (),
) -> Device:
    config, data = tmp_path / "device" / "agent.toml", tmp_path / "device" / "data"
    args = [
        "init", "--config", str(config), "--data-dir", str(data), "--name", "edge-e2e",
        "--listen", f"127.0.0.1:{ports['client']}", "--monitor", f"127.0.0.1:{ports['monitor']}",
        "--trust-issuer", ECHO_ISSUER, "--trust-issuer", DEMO_ISSUER,
    ]  # fmt: skip
    for key in cluster_issuers:
        args += ["--cluster-issuer", key]
    if hub is not None:
        args += ["--upstream", hub.leaf_url, "--upstream-creds", str(hub.leaf_creds)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    with config.open("a") as extra:
        extra.write("\n[budgets]\nheartbeat_interval_s = 1.0\n")
    agent = agent_factory(config, data).start()
    agent.wait_ready()
    return Device(config, data, result.stdout.strip(), f"nats://127.0.0.1:{ports['client']}", agent)


def in_file_root(device: Device, module: Path) -> str:
    """Copy ``module`` under the device's file root; return its ``file://`` reference."""
    target = device.data / "actors" / module.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(module, target)
    return f"file://{target}"


@contextlib.asynccontextmanager
async def lattice(
    url: str, creds: Path | None = None, *, seed: str | None = None
) -> AsyncIterator[LatticeClient]:
    client = await nats.connect(
        url, user_credentials=str(creds) if creds else None, nkeys_seed_str=seed
    )
    try:
        yield LatticeClient(client)
    finally:
        await client.close()


async def until_pinged(client: LatticeClient, host_id: str, timeout: float = 20) -> dict[str, Any]:
    """Ping until ``host_id`` answers: interest crosses a leaf link asynchronously."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for reply in await client.ping(wait=0.5):
            if reply.get("id") == host_id:
                return reply
    raise AssertionError(f"host {host_id} never answered ping.hosts")


async def rpc(
    client: LatticeClient, actor: str, body: bytes, timeout: float = 5
) -> InvocationResponse:
    reply = await client.nats.request(f"wasmbus.rpc.default.{actor}", body, timeout=timeout)
    return InvocationResponse.decode(bytes(reply.data))


async def nothing_arrives(client: LatticeClient, subject: str, seconds: float) -> bool:
    subscription = await client.nats.subscribe(subject)
    try:
        await subscription.next_msg(timeout=seconds)
    except TimeoutError:
        return True
    finally:
        await subscription.unsubscribe()
    return False


async def test_cloud_sees_and_drives_the_device(
    tmp_path: Path, hub: Hub, ports: dict[str, int], agent_factory: type[AgentProcess],
    third_party_dir: Path,
) -> None:  # fmt: skip
    cloud_cluster = generate(KeyKind.CLUSTER)
    device = setup_device(
        tmp_path, ports, agent_factory, hub=hub, cluster_issuers=(cloud_cluster.public_key,)
    )
    wait_until(lambda: hub.leaf_connections() >= 1, 20, "the leaf link")
    async with lattice(hub.client_url, hub.client_creds) as cloud:
        pong = await until_pinged(cloud, device.host_id)
        assert pong["friendly_name"] == "edge-e2e"
        assert pong["labels"]["hostcore.os"] == "linux"
        assert cloud_cluster.public_key in pong["cluster_issuers"].split(",")

        # The fleet publishes the actor once in the cloud; the device pulls it via its leaf.
        store = await cloud.nats.jetstream().create_object_store("ACTORS")
        module = (third_party_dir / "echo_messaging_v0.9.0.wasm").read_bytes()
        await store.put("echo_messaging.wasm", module)
        started = await cloud.start_actor(
            device.host_id, "nats-os://ACTORS/echo_messaging.wasm?domain=hub"
        )
        assert started["public_key"] == ECHO_ACTOR
        assert started["claims"]["issuer"] == ECHO_ISSUER
        assert "wasmcloud:messaging" in started["claims"]["caps"]

        inventory = await cloud.inventory(device.host_id)
        assert [a["id"] for a in inventory["actors"]] == [ECHO_ACTOR]

        def invocation(
            operation: str, msg: bytes, key: Any = cloud_cluster, target: str = ECHO_ACTOR
        ) -> Any:
            return new_invocation(
                WasmCloudEntity(key.public_key), WasmCloudEntity(target), operation, msg,
                cluster_key=key, host_id=device.host_id,
            )  # fmt: skip

        health = await rpc(
            cloud, ECHO_ACTOR, invocation("Actor.HealthRequest", msgpack.packb({})).encode()
        )
        assert health.error is None
        assert msgpack.unpackb(health.msg) == {"healthy": True}

        # The actor answers a message by publishing through the device's messaging capability;
        # the publish crosses the leaf back to the cloud.
        replies = await cloud.nats.subscribe("cloud.replies")
        await cloud.nats.flush()
        await asyncio.sleep(0.5)
        message = msgpack.packb(
            {"subject": "echo.in", "replyTo": "cloud.replies", "body": b"hello"}
        )
        handled = await rpc(
            cloud, ECHO_ACTOR, invocation("MessageSubscriber.HandleMessage", message).encode()
        )
        assert handled.error is None
        assert (await replies.next_msg(timeout=10)).data == b"reply: hello"
        await replies.unsubscribe()

        # Forgeries get an error reply and never reach the actor.
        forged_body = msgpack.packb({"subject": "echo.in", "replyTo": "forged.reply", "body": b"x"})
        untrusted = invocation(
            "MessageSubscriber.HandleMessage", forged_body, key=generate(KeyKind.CLUSTER)
        )
        genuine = invocation("MessageSubscriber.HandleMessage", forged_body)
        tampered = dataclasses.replace(
            genuine, msg=msgpack.packb({"subject": "x", "replyTo": "forged.reply", "body": b"y"})
        )
        wrong_target = invocation(
            "MessageSubscriber.HandleMessage", forged_body, target=PROXY_ACTOR
        )
        watcher = asyncio.create_task(nothing_arrives(cloud, "forged.reply", 3.0))
        await asyncio.sleep(0.5)
        for forged, why in ((untrusted, "issuer"), (tampered, "hash"), (wrong_target, "target")):
            answer = await rpc(cloud, ECHO_ACTOR, forged.encode())
            assert answer.error is not None and "rejected" in answer.error, (why, answer)
        assert await watcher, "a forged invocation reached the actor"

        async with cloud.events("host_heartbeat", "host_stopped") as queue:
            beat = await cloud.wait_for(queue, lambda e: e["source"] == device.host_id, 10)
            assert beat["data"]["actors"] == {ECHO_ACTOR: 1}
            assert "memory_total_mb" in beat["data"]["resources"]
            await cloud.command(device.host_id, "stop", {"host_id": device.host_id})
            stopped = await cloud.wait_for(queue, lambda e: e["type"].endswith("host_stopped"), 10)
            assert stopped["source"] == device.host_id
    assert device.agent.process is not None
    assert device.agent.process.wait(30) == 0


def kv(operation: str, **fields: Any) -> tuple[str, bytes]:
    return f"wasmcloud:keyvalue|KeyValue.{operation}", msgpack.packb(fields)


async def test_offline_device_keeps_its_lattice(
    tmp_path: Path, hub: Hub, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    device = setup_device(tmp_path, ports, agent_factory, hub=hub)
    wait_until(lambda: hub.leaf_connections() >= 1, 20, "the leaf link")
    assert device.agent.process is not None
    pid = device.agent.process.pid
    hub.stop()

    cluster = (device.data / "keys" / "cluster.nk").read_text().strip()
    key = KeyPair.from_seed(cluster)
    async with lattice(device.client_url, seed=agent_seed(device.data)) as local:
        await until_pinged(local, device.host_id, timeout=5)
        started = await local.start_actor(device.host_id, in_file_root(device, PROXY))
        assert started["public_key"] == PROXY_ACTOR

        async def call(operation: str, body: bytes) -> bytes:
            reply = await local.invoke(
                PROXY_ACTOR, operation, body, cluster_key=key, host_id=device.host_id
            )
            return reply.response

        assert msgpack.unpackb(await call(*kv("Increment", key="visits", value=1))) == 1
        assert msgpack.unpackb(await call(*kv("Increment", key="visits", value=2))) == 3
        await call(*kv("Set", key="greeting", value="offline", expires=0))
        assert msgpack.unpackb(await call(*kv("Get", key="greeting"))) == {
            "value": "offline",
            "exists": True,
        }
        inbox = await local.nats.subscribe("offline.out")
        await call(
            "wasmcloud:messaging|Messaging.Publish",
            msgpack.packb({"subject": "offline.out", "body": b"still working"}),
        )
        assert (await inbox.next_msg(timeout=5)).data == b"still working"
        await inbox.unsubscribe()

    hub.start()
    wait_until(lambda: hub.leaf_connections() >= 1, 30, "the leaf to reconnect")
    async with lattice(hub.client_url, hub.client_creds) as cloud:
        await until_pinged(cloud, device.host_id)
        async with cloud.events("host_heartbeat") as queue:
            beat = await cloud.wait_for(queue, lambda e: e["source"] == device.host_id, 10)
        assert PROXY_ACTOR in beat["data"]["actors"]
    assert device.agent.process.pid == pid and device.agent.process.poll() is None
    assert device.agent.terminate() == 0


async def test_kill_9_and_restart_brings_everything_back(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    device = setup_device(tmp_path, ports, agent_factory, hub=None)
    key = KeyPair.from_seed((device.data / "keys" / "cluster.nk").read_text().strip())
    link = {
        "actor_id": PROXY_ACTOR, "contract_id": "wasmcloud:httpserver", "link_name": "default",
        "provider_id": "VAG3QITQQ2ODAOWB5TTQSDJ53XK3SHBEIFNK4AYJ5RKAX2UNSCAPHA5M",
        "values": {"PORT": "8080"},
    }  # fmt: skip
    async with lattice(device.client_url, seed=agent_seed(device.data)) as local:
        await local.start_actor(device.host_id, in_file_root(device, PROXY), count=2)
        ack = await local.request("wasmbus.ctl.default.linkdefs.put", link)
        assert ack == {"accepted": True, "error": ""}
        first = await local.invoke(
            PROXY_ACTOR, *kv("Increment", key="boots", value=1), cluster_key=key,
            host_id=device.host_id,
        )  # fmt: skip
        assert msgpack.unpackb(first.response) == 1

    leaf = device.agent.leaf_pid()
    assert device.agent.process is not None and leaf is not None
    device.agent.process.send_signal(signal.SIGKILL)
    device.agent.process.wait()
    wait_until(lambda: not alive(leaf), 10, "the orphaned leaf to go")

    again = agent_factory(device.config, device.data).start()
    again.wait_ready()
    async with lattice(device.client_url, seed=agent_seed(device.data)) as local:
        inventory = await local.inventory(device.host_id)
        (actor,) = inventory["actors"]
        assert actor["id"] == PROXY_ACTOR and len(actor["instances"]) == 2
        links = await local.request("wasmbus.ctl.default.get.links")
        assert [(x["actor_id"], x["values"]) for x in links["links"]] == [
            (PROXY_ACTOR, {"PORT": "8080"})
        ]
        second = await local.invoke(
            PROXY_ACTOR, *kv("Increment", key="boots", value=1), cluster_key=key,
            host_id=device.host_id,
        )  # fmt: skip
        assert msgpack.unpackb(second.response) == 2  # the KV bucket survived too
    assert again.terminate() == 0
