"""Chaos: the leaf, the agent and the sandbox workers killed while the host works.

* leaf nats-server ``kill -9`` x10, 5 s apart: each time a local publish and an actor
  invocation succeed again, quickly (the figures are in docs/BENCHMARKS.md; here only a
  generous timeout is asserted);
* agent ``kill -9`` x10 during control traffic: the state file is never corrupt, and the
  actors and links that were acknowledged are back after every restart;
* worker ``kill -9`` x3 during a burst: every caller gets a reply, no actor is quarantined
  (unit-tested against the sandbox in tests/unit/test_sandbox_quarantine.py; here through
  the lattice).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import nats
import pytest
from lattice_testing import AgentProcess, agent_seed, alive, free_port, wait_until

from agent.config import load_config
from agent.identity.host import ensure_host_keys
from agent.identity.keys import KeyKind, KeyPair, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient, connect
from agent.launch import run_host

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"
CTL = "wasmbus.ctl.default"
RECOVERY_TIMEOUT_S = 10.0  # generous; the measured recovery is ~1 s (tests/bench/chaos.py)


def signed_echo(directory: Path, issuer: KeyPair, name: str = "echo") -> str:
    signed, _ = sign_module(ECHO.read_bytes(), issuer, name)
    path = directory / "actors" / f"{name}.wasm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(signed)
    return f"file://{path}"


def write_config(root: Path, issuer: KeyPair) -> Path:
    path = root / "agent.toml"
    path.write_text(
        f"[host]\ndata_dir = '{root / 'data'}'\nprofile = 'generic-x86_64'\n"
        f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
        f"[trust]\ntrusted_issuers = ['{issuer.public_key}']\n"
    )
    return path


async def until_ok(what: str, attempt: object) -> float:
    """Retry ``attempt`` (a coroutine function) until it succeeds; return the seconds taken."""
    started = time.monotonic()
    deadline = started + RECOVERY_TIMEOUT_S
    while True:
        try:
            await attempt()  # type: ignore[operator]
            return time.monotonic() - started
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not recover in {RECOVERY_TIMEOUT_S} s") from exc
            await asyncio.sleep(0.05)


async def test_leaf_killed_ten_times(tmp_path: Path) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config = load_config(write_config(tmp_path, issuer), env={})
    async with (
        run_host(config) as host,
        connect(host.client_url, seed=agent_seed(config.host.data_dir)) as client,
    ):
        ref = signed_echo(config.host.data_dir, issuer)
        actor = (await client.start_actor(host.keys.host_id, ref))["public_key"]
        # Clients of the device that keep reconnecting, as applications do: an anonymous
        # one for plain messages, the agent user for invocations.
        local = await nats.connect(host.client_url, max_reconnect_attempts=-1,
                                   reconnect_time_wait=0.1)  # fmt: skip
        caller = LatticeClient(
            await nats.connect(host.client_url, nkeys_seed_str=agent_seed(config.host.data_dir),
                               max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        )  # fmt: skip
        try:
            inbox = await local.subscribe("app.ping")

            async def publish() -> None:
                await local.publish("app.ping", b"x")
                await inbox.next_msg(timeout=0.5)

            async def invoke() -> None:
                reply = await caller.invoke(
                    actor, "Echo", b"hi", cluster_key=host.keys.cluster,
                    host_id=host.keys.host_id, timeout=0.5,
                )  # fmt: skip
                assert reply.response == b"hi"

            recoveries = []
            for _ in range(10):
                pid = host.leaf.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.05)
                recoveries.append(
                    max(await until_ok("local publish", publish),
                        await until_ok("actor invocation", invoke))
                )  # fmt: skip
                assert host.leaf.pid not in (None, pid)
                await asyncio.sleep(5)
            assert host.leaf.restarts == 10
        finally:
            await local.close()
            await caller.nats.close()
    print(f"leaf recovery after kill -9 (s): {sorted(round(r, 2) for r in recoveries)}")


def test_agent_killed_ten_times_during_control_traffic(
    tmp_path: Path, agent_factory: type[AgentProcess]
) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config_path = write_config(tmp_path, issuer)
    data = tmp_path / "data"
    host_id = ensure_host_keys(data / "keys")[0].host_id
    refs = [signed_echo(data, issuer, f"echo-{index}") for index in range(4)]
    url = f"nats://{load_config(config_path, env={}).leaf.listen}"
    wanted: dict[str, int] = {}  # actor id -> the instance count last acknowledged
    links: set[str] = set()  # link names acknowledged

    async def traffic(seconds: float, first: bool) -> None:
        async with connect(url, seed=agent_seed(data)) as client:
            if first:
                for ref in refs:
                    wanted[(await client.start_actor(host_id, ref))["public_key"]] = 1
            actors = sorted(wanted)
            stop = time.monotonic() + seconds
            step = 0
            while time.monotonic() < stop:
                step += 1
                actor, count = actors[step % len(actors)], 1 + step % 4
                body = {"actor_id": actor, "actor_ref": actor, "count": count}
                link = {"actor_id": actor, "contract_id": "wasmcloud:keyvalue",
                        "provider_id": "VPROV", "link_name": f"l{step}"}  # fmt: skip
                try:
                    ack = await client.request(f"{CTL}.cmd.{host_id}.scale", body, timeout=1)
                    if ack.get("accepted"):
                        wanted[actor] = count
                    ack = await client.request(f"{CTL}.linkdefs.put", link, timeout=1)
                    if ack.get("accepted"):
                        links.add(f"l{step}")
                except Exception:
                    return  # the agent was killed under us

    for round_ in range(10):
        agent = agent_factory(config_path, data).start()
        agent.wait_ready()
        if round_:
            check_restored(data, wanted, links)
        asyncio.run(traffic(1.0 + (round_ % 3) * 0.3, first=round_ == 0))
        assert agent.process is not None
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait()
        leaf = agent.leaf_pid()
        if leaf is not None:
            wait_until(lambda leaf=leaf: not alive(leaf), 10, "the orphaned leaf to exit")
        state = json.loads((data / "state.json").read_text())  # never corrupt
        assert state["version"] == 1
    agent = agent_factory(config_path, data).start()
    agent.wait_ready()
    check_restored(data, wanted, links)


def check_restored(data: Path, wanted: dict[str, int], links: set[str]) -> None:
    """The restarted host's state has every acknowledged count and link (none dropped)."""
    state = json.loads((data / "state.json").read_text())
    counts = {actor["actor_id"]: actor["count"] for actor in state["actors"]}
    assert all("error" not in actor for actor in state["actors"]), state["actors"]
    assert counts == wanted
    assert links <= {link["link_name"] for link in state["links"]}


async def test_worker_killed_three_times_during_a_burst(tmp_path: Path) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config = load_config(write_config(tmp_path, issuer), env={})
    async with (
        run_host(config) as host,
        connect(host.client_url, seed=agent_seed(config.host.data_dir)) as client,
    ):
        ref = signed_echo(config.host.data_dir, issuer)
        actor = (await client.start_actor(host.keys.host_id, ref))["public_key"]
        assert host.registry is not None

        async def call(index: int) -> bool:
            try:
                reply = await client.invoke(
                    actor, "Echo", f"{index}".encode(), cluster_key=host.keys.cluster,
                    host_id=host.keys.host_id, timeout=15,
                )  # fmt: skip
            except Exception as exc:
                assert "worker" in str(exc).lower() or "sandbox" in str(exc).lower(), exc
                return False
            assert reply.response == f"{index}".encode()
            return True

        async def killer() -> None:
            for _ in range(3):
                await asyncio.sleep(0.15)
                pids = host.registry.sandbox.worker_pids() if host.registry else []
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)

        results = await asyncio.gather(*(call(i) for i in range(600)), killer())
        answered = results[:-1]
        assert len(answered) == 600  # every caller got an answer (a result or an error)
        assert sum(answered) > 500
        assert host.registry.quarantined() == {}
        assert (await call(9999)) is True
