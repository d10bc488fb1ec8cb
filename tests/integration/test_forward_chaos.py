"""Store-and-forward under chaos, with real processes: an operator-mode hub holding the
uplink stream, a real ``lattice-edge run`` device, and 10,000 messages published on the
device while the uplink flaps twenty times, or while the agent and its leaf are killed -9.
Every message must reach the hub stream exactly once and in order.

``LATTICE_EDGE_TEST_FORWARD_MESSAGES`` scales the runs (default 10,000, the issue's figure).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats
import pytest
from forward_testing import (
    CuttableLink,
    Producer,
    ProxiedHub,
    check_exactly_once_in_order,
    create_uplink,
    device_config,
    health_of,
    hub_messages,
    wait_hub_count,
)
from lattice_testing import AgentProcess, Hub, agent_seed, alive, free_port

from agent.config import load_config
from agent.leaf.binary import NatsServer

pytestmark = pytest.mark.integration

COUNT = int(os.environ.get("LATTICE_EDGE_TEST_FORWARD_MESSAGES", "10000"))
PAUSE = 0.002  # between the producer's messages, so the run spans the chaos


async def device_health(config: Path, host_id: str) -> dict[str, object]:
    settings = load_config(config, env={})
    client = await nats.connect(
        f"nats://{settings.leaf.listen}", nkeys_seed_str=agent_seed(settings.host.data_dir)
    )
    try:
        report = await health_of(client, host_id)
    finally:
        await client.close()
    forward: dict[str, object] = report["forward"]
    return forward


async def test_messages_survive_twenty_uplink_flaps_exactly_once_in_order(
    tmp_path: Path, nats_server: NatsServer, agent_factory: type[AgentProcess]
) -> None:
    proxy_port = free_port()
    hub = ProxiedHub(tmp_path / "hub", nats_server.path, proxy_port)
    link = CuttableLink(hub.leaf_port, port=proxy_port)
    await asyncio.to_thread(hub.start)
    await link.restore()
    try:
        await create_uplink(hub)
        config = device_config(
            tmp_path / "device", upstream_url=hub.proxied_leaf_url, creds=hub.leaf_creds
        )
        agent = agent_factory(config, tmp_path / "device" / "data").start()
        host_id = (await asyncio.to_thread(agent.wait_ready))["host_id"]
        producer = Producer(f"nats://{load_config(config, env={}).leaf.listen}")
        producing = asyncio.ensure_future(producer.run(COUNT, pause=PAUSE))
        for flap in range(20):
            await asyncio.sleep(0.5)
            if flap % 5 == 4:  # every fifth flap the hub itself goes away and comes back
                await asyncio.to_thread(hub.stop)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(hub.start)
            else:
                await link.cut()
                await asyncio.sleep(0.5)
                await link.restore()
        await producing
        await wait_hub_count(hub, COUNT, 90)
        await asyncio.sleep(1.0)  # anything extra (a duplicate) would arrive by now
        check_exactly_once_in_order(await hub_messages(hub), COUNT, host_id)
        report = await device_health(config, host_id)
        assert report["dropped"] == 0 and report["refused"] == 0
        assert agent.terminate() == 0
    finally:
        await link.close()
        await asyncio.to_thread(hub.stop)


async def test_messages_survive_the_agent_and_its_leaf_killed_9_five_times_each(
    tmp_path: Path, hub: Hub, agent_factory: type[AgentProcess]
) -> None:
    await create_uplink(hub)
    data = tmp_path / "device" / "data"
    config = device_config(tmp_path / "device", upstream_url=hub.leaf_url, creds=hub.leaf_creds)
    agent = agent_factory(config, data).start()
    host_id = (await asyncio.to_thread(agent.wait_ready))["host_id"]
    producer = Producer(f"nats://{load_config(config, env={}).leaf.listen}")
    producing = asyncio.ensure_future(producer.run(COUNT, pause=PAUSE))
    for round_ in range(10):
        await asyncio.sleep(1.2)
        if round_ % 2 == 0:  # the agent: kill -9, then start it again as systemd would
            assert agent.process is not None
            agent.process.kill()
            await asyncio.to_thread(agent.process.wait)
            agent = agent_factory(config, data).start()
            await asyncio.to_thread(agent.wait_ready, 60)
        else:  # its nats-server: kill -9; the agent restarts it
            leaf = agent.leaf_pid()
            assert leaf is not None
            os.kill(leaf, signal.SIGKILL)
            await _wait_new_leaf(agent, leaf)
    await producing
    await wait_hub_count(hub, COUNT, 90)
    await asyncio.sleep(1.0)
    check_exactly_once_in_order(await hub_messages(hub), COUNT, host_id)
    report = await device_health(config, host_id)
    assert report["dropped"] == 0 and report["refused"] == 0
    assert agent.terminate() == 0


async def _wait_new_leaf(agent: AgentProcess, old: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        pid = agent.leaf_pid()
        if pid is not None and pid != old and alive(pid):
            return
        if loop.time() > deadline:
            raise AssertionError(f"no new nats-server after killing {old}:\n{agent.log()}")
        await asyncio.sleep(0.1)
