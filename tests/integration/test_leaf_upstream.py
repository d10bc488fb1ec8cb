"""The device's leaf node bridged to an operator-mode hub (the NGS stand-in), with real
nats-server processes and a real ``lattice-edge`` agent set up by ``lattice-edge init``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import nats
import pytest
from lattice_testing import AgentProcess, Hub, alive, run_cli, wait_until

pytestmark = pytest.mark.integration


def init_device(
    tmp_path: Path,
    ports: dict[str, int],
    upstream: str | None = None,
    creds: Path | None = None,
    *extra: str,
) -> tuple[Path, Path, str]:
    """``lattice-edge init`` a device in ``tmp_path/device``; return (config, data, host id).

    ``extra`` are more ``init`` arguments.
    """
    config = tmp_path / "device" / "agent.toml"
    data = tmp_path / "device" / "data"
    args = [
        "init", "--config", str(config), "--data-dir", str(data), "--name", "edge-test",
        "--listen", f"127.0.0.1:{ports['client']}", "--monitor", f"127.0.0.1:{ports['monitor']}",
    ]  # fmt: skip
    if upstream:
        args += ["--upstream", upstream]
    if creds:
        args += ["--upstream-creds", str(creds)]
    result = run_cli(*args, *extra)
    assert result.returncode == 0, result.stderr
    host_id = result.stdout.strip()
    assert host_id.startswith("N") and len(host_id) == 56
    return config, data, host_id


async def receive_one(
    subscriber: Any, publisher: Any, subject: str, payload: bytes, timeout: float = 15
) -> bytes:
    """Subscribe on one side, publish on the other until a message crosses the leaf link.

    Interest crosses a leaf link asynchronously, so the first publishes may find no
    subscriber; the loop republishes until one arrives or ``timeout`` passes.
    """
    sub = await subscriber.subscribe(subject)
    await subscriber.flush()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await publisher.publish(subject, payload)
            await publisher.flush()
            with contextlib.suppress(TimeoutError):
                message = await sub.next_msg(timeout=0.3)
                return bytes(message.data)
        raise AssertionError(f"no message on {subject} within {timeout} s")
    finally:
        await sub.unsubscribe()


async def test_device_and_hub_exchange_messages_both_ways(
    tmp_path: Path, hub: Hub, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    config, data, host_id = init_device(tmp_path, ports, hub.leaf_url, hub.leaf_creds)
    agent = agent_factory(config, data).start()
    state = agent.wait_ready()
    assert state["host_id"] == host_id
    wait_until(lambda: hub.leaf_connections() >= 1, 20, "the leaf link to the hub")

    device = await nats.connect(f"nats://127.0.0.1:{ports['client']}")
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    try:
        up = await receive_one(cloud, device, "telemetry.edge-test", b"23.5C")
        down = await receive_one(device, cloud, "commands.edge-test", b"reboot")
    finally:
        await device.close()
        await cloud.close()
    assert up == b"23.5C"
    assert down == b"reboot"

    status = run_cli("status", "--config", str(config), "--json")
    report = json.loads(status.stdout)
    assert status.returncode == 0
    assert report["agent"]["up"] and report["leaf"]["up"]
    assert report["upstream"]["connected"] is True
    assert report["agent"]["host_id"] == host_id

    assert agent.terminate() == 0


async def test_killed_nats_server_is_restarted(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    config, data, _ = init_device(tmp_path, ports)
    agent = agent_factory(config, data).start()
    agent.wait_ready()
    first = agent.leaf_pid()
    assert first is not None and alive(first)

    import os

    os.kill(first, signal.SIGKILL)
    second = wait_until(
        lambda: (pid := agent.leaf_pid()) and pid != first and alive(pid) and pid,
        30,
        "a new nats-server",
    )
    assert agent.process is not None and agent.process.poll() is None

    async def local_round_trip() -> bytes:
        client = await nats.connect(f"nats://127.0.0.1:{ports['client']}", connect_timeout=1)
        try:
            return await receive_one(client, client, "local.check", b"ping", timeout=5)
        finally:
            await client.close()

    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            assert await local_round_trip() == b"ping"
            break
        except (OSError, nats.errors.Error):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert "exited unexpectedly" in agent.log()
    assert agent.terminate() == 0
    assert not alive(second)


async def test_agent_survives_the_hub_going_away(
    tmp_path: Path, hub: Hub, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    config, data, _ = init_device(tmp_path, ports, hub.leaf_url, hub.leaf_creds)
    agent = agent_factory(config, data).start()
    agent.wait_ready()
    wait_until(lambda: hub.leaf_connections() >= 1, 20, "the leaf link to the hub")

    hub.stop()
    await asyncio.sleep(3)
    assert agent.process is not None and agent.process.poll() is None
    offline = run_cli("status", "--config", str(config), "--json")
    report = json.loads(offline.stdout)
    assert report["leaf"]["up"] and report["upstream"]["connected"] is False

    # The device's own lattice keeps working while the uplink is down.
    device = await nats.connect(f"nats://127.0.0.1:{ports['client']}")
    try:
        assert await receive_one(device, device, "offline.check", b"still here") == b"still here"
    finally:
        await device.close()

    hub.start()
    wait_until(lambda: hub.leaf_connections() >= 1, 30, "the leaf to reconnect")
    device = await nats.connect(f"nats://127.0.0.1:{ports['client']}")
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    try:
        assert await receive_one(cloud, device, "telemetry.after", b"back") == b"back"
    finally:
        await device.close()
        await cloud.close()
    assert agent.terminate() == 0


def test_sigterm_exits_zero_and_leaves_no_nats_server(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    config, data, _ = init_device(tmp_path, ports)
    agent = agent_factory(config, data).start()
    agent.wait_ready()
    leaf = agent.leaf_pid()
    assert leaf is not None and alive(leaf)
    assert agent.terminate() == 0
    assert not alive(leaf)
    assert not agent.state_file.exists()
    assert not (data / "run" / "nats-server.pid").exists()
    log = agent.log()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log
