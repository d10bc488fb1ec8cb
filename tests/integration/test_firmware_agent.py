"""The firmware bridge in a real ``lattice-edge run`` agent, with the simulator as a separate
``lattice-edge firmware simulate --pty`` process, driven by the ``lattice-edge firmware`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_testing import assert_documented_keys, documented_json
from firmware_testing import SigningKey, make_key, sign_image
from lattice_testing import CLI, AgentProcess, run_cli, stop_process, wait_until

from agent.config import load_config
from agent.identity.host import load_host_keys

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "agent" / "runtime" / "demo" / "echo.wasm"
DEMO_ISSUER = "AB2YB35FXYV3YF6DXP6H35NI4IZH4NMREFWJIEF4DQZIXF3X3MOUCPVJ"


def init(tmp_path: Path, ports: dict[str, int], firmware: str) -> Path:
    config = tmp_path / "agent.toml"
    result = run_cli(
        "init", "--config", str(config), "--data-dir", str(tmp_path / "data"),
        "--listen", f"127.0.0.1:{ports['client']}", "--monitor", f"127.0.0.1:{ports['monitor']}",
        "--trust-issuer", DEMO_ISSUER,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with config.open("a") as out:
        out.write(firmware)
    return config


@contextlib.contextmanager
def simulator(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([CLI, "firmware", "simulate", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield process
    finally:
        stop_process(process)
        if process.stderr is not None:
            process.stderr.close()


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def firmware_cli(
    config: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``lattice-edge firmware ARGS --config CONFIG``; with ``--json``, what a successful run
    printed has the keys its docstring documents (for ``update``, its last line: the others
    are its progress)."""
    words = ["firmware", *args, "--config", str(config)]
    result = run_cli(*words, timeout=timeout)
    if "--json" in words and result.returncode == 0:
        if args[0] == "update":
            lines = [json.loads(line) for line in result.stdout.splitlines()]
            assert all(line["event"] for line in lines), lines
            assert_documented_keys(words, lines[-1])
        else:
            documented_json(words, result.stdout)
    return result


@contextlib.asynccontextmanager
async def local_lattice(config_path: Path) -> AsyncIterator[Any]:
    """The one place these tests connect to the agent's local port (see the common brief)."""
    from agent.lattice.client import connect_local

    async with connect_local(load_config(config_path, env={})) as client:
        yield client


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path, Path]:
    directory = tmp_path_factory.mktemp("fw")
    key = make_key(directory, "ed", "ed25519")
    image = sign_image(directory, key, "1.4.2", size=40_000)
    tampered = bytearray(image.read_bytes())
    tampered[0x500] ^= 0xFF
    (directory / "tampered.bin").write_bytes(tampered)
    return key, image, directory / "tampered.bin"


def test_update_through_the_agent_with_the_cli(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess],
    signing: tuple[SigningKey, Path, Path],
) -> None:  # fmt: skip
    key, image, tampered = signing
    link = tmp_path / "ttySIM0"
    config = init(tmp_path, ports, f"""
[firmware]
trusted_keys = ["{key.public}"]
telemetry_period_s = 1
health_window_s = 1

[[firmware.devices]]
name = "sim0"
port = "{link}"
timeout_s = 0.5
""")  # fmt: skip
    with simulator("--pty", "--link", str(link), "--key", str(key.public), "--reenumerate",
                   "--noise", "0.2", "--seed", "3"):  # fmt: skip
        wait_until(link.exists, 15, "the simulator's pty")
        agent = agent_factory(config, tmp_path / "data").start()
        agent.wait_ready()

        def online() -> bool:
            listed = firmware_cli(config, "list", "--json")
            if listed.returncode != 0:
                return False
            (device,) = json.loads(listed.stdout)["devices"]
            return bool(device["state"] == "online")

        wait_until(online, 20, "sim0 to be online")
        info = json.loads(firmware_cli(config, "info", "sim0", "--json").stdout)
        assert info["images"][0]["version"] == "1.0.0" and info["stat_groups"] == ["sim", "smp"]

        refused = firmware_cli(config, "update", "sim0", str(tampered))
        assert refused.returncode == 1
        assert "does not match its contents" in refused.stderr and "Traceback" not in refused.stderr

        done = firmware_cli(config, "update", "sim0", str(image), "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[0]["event"] == "started" and lines[0]["image"]["version"] == "1.4.2"
        assert any(line["event"] == "progress" and line["step"] == "uploading" for line in lines)
        assert lines[-1]["event"] == "succeeded" and lines[-1]["confirmed"] is True

        text = firmware_cli(config, "info", "sim0")
        assert text.returncode == 0 and "1.4.2" in text.stdout and "confirmed" in text.stdout
        assert agent.process is not None
        maps = mapped_libraries(agent.process.pid)
        assert "pydantic_core" not in maps  # the bridge reads SMP without pydantic
        assert agent.terminate() == 0


def test_without_firmware_devices_the_bridge_is_not_loaded(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    config = init(tmp_path, ports, "")
    agent = agent_factory(config, tmp_path / "data").start()
    agent.wait_ready()
    assert agent.process is not None
    maps = mapped_libraries(agent.process.pid)
    assert "_cbor2" not in maps and "pydantic_core" not in maps
    listed = firmware_cli(config, "list")
    assert listed.returncode == 1 and "no firmware bridge answers" in listed.stderr
    assert "with a device in [[firmware.devices]]" in listed.stderr
    assert "Traceback" not in listed.stderr and "lattice-edge.firmware" not in listed.stderr
    assert agent.terminate() == 0


def test_a_dead_mcu_does_not_slow_down_actor_rpc(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    # One MCU that holds its port open and never answers, one whose port does not exist.
    master, slave = pty.openpty()
    hung = os.ttyname(slave)
    config = init(tmp_path, ports, f"""
[firmware]
telemetry_period_s = 0.5

[[firmware.devices]]
name = "hung"
port = "{hung}"
timeout_s = 1.0

[[firmware.devices]]
name = "absent"
port = "{tmp_path / 'no-such-tty'}"
""")  # fmt: skip
    try:
        agent = agent_factory(config, tmp_path / "data").start()
        agent.wait_ready()
        started = run_cli("actor", "start", f"file://{DEMO}", "--config", str(config))
        assert started.returncode == 0, started.stderr
        actor = started.stdout.strip()
        latencies, firmware_answers = asyncio.run(_rpc_while_mcus_hang(config, actor))
        assert len(latencies) == 40
        assert max(latencies) < 2.0, latencies  # generous: a blocked loop would take seconds
        for code, seconds in firmware_answers:
            assert code == 503 and seconds < 5  # answered at once, not after retries
        assert agent.terminate() == 0
    finally:
        os.close(master)
        os.close(slave)


async def _rpc_while_mcus_hang(
    config: Path, actor: str
) -> tuple[list[float], list[tuple[int, float]]]:
    keys = load_host_keys(load_config(config, env={}).keys_dir)
    async with local_lattice(config) as client:

        async def firmware(device: str) -> tuple[int, float]:
            began = time.monotonic()
            subject = f"lattice-edge.firmware.{keys.host_id}.{device}.echo"
            reply = await client.nats.request(subject, b'{"text": "x"}', timeout=30)
            return int(json.loads(reply.data)["code"]), time.monotonic() - began

        async def rpc() -> list[float]:
            latencies = []
            for _ in range(40):
                answer = await client.invoke(actor, "Greet", b"edge", cluster_key=keys.cluster,
                                             host_id=keys.host_id, timeout=10)  # fmt: skip
                assert answer.response == b"Hello, edge!"
                latencies.append(answer.seconds)
                await asyncio.sleep(0.05)
            return latencies

        hanging = [asyncio.create_task(firmware(d)) for d in ("hung", "absent", "hung")]
        latencies = await rpc()
        answers = [await task for task in hanging]
    return latencies, answers
