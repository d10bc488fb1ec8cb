"""Hardening figures: how fast the host is back after its leaf is killed, and whether its
memory stays flat over many invocations.

    .venv/bin/python tests/bench/hardening.py [--kills 10] [--calls 200000]

* ``leaf_crash_recovery``: ``kill -9`` of the leaf's nats-server, then the time until a
  local publish round trip and an actor invocation both succeed again (min/median/max of
  ``--kills``), beside the baseline of a bare nats-server's spawn-to-healthy time measured
  in the same run;
* ``rss_over_invocations``: RSS of the agent and of the sandbox workers before and after
  ``--calls`` 1 KiB echo invocations through the lattice (pipelined), as a ratio.

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from footprint import bare_start
from lattice_testing import agent_seed, free_port

from agent.config import load_config
from agent.host import Host
from agent.identity.keys import KeyKind, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient
from agent.launch import run_host

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lattice-edge-bench-") as scratch:
        root = Path(scratch)
        issuer = generate(KeyKind.ACCOUNT)
        (root / "agent.toml").write_text(
            f"[host]\ndata_dir = '{root / 'data'}'\n"
            f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
            f"[trust]\ntrusted_issuers = ['{issuer.public_key}']\n"
        )
        config = load_config(root / "agent.toml", env={})
        signed, _ = sign_module(ECHO.read_bytes(), issuer, "bench echo")
        module = config.host.data_dir / "actors" / "echo.wasm"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_bytes(signed)
        baseline = [bare_start(Path(config.leaf.nats_server or _server()), root) for _ in range(5)]
        async with run_host(config) as host:
            client = LatticeClient(
                await nats.connect(host.client_url, nkeys_seed_str=agent_seed(config.host.data_dir),
                                   max_reconnect_attempts=-1, reconnect_time_wait=0.05)
            )  # fmt: skip
            try:
                actor = (await client.start_actor(host.keys.host_id, f"file://{module}"))[
                    "public_key"
                ]
                await leaf_recovery(host, client, actor, args.kills, baseline)
                await rss_over_invocations(host, client, actor, args.calls)
            finally:
                await client.nats.close()


def _server() -> str:
    from agent.leaf.binary import find_nats_server

    return str(find_nats_server().path)


async def leaf_recovery(
    host: Host, client: LatticeClient, actor: str, kills: int, baseline: list[float]
) -> None:
    nc = client.nats
    inbox = await nc.subscribe("bench.ping")

    async def both() -> None:
        await nc.publish("bench.ping", b"x")
        await inbox.next_msg(timeout=0.25)
        await client.invoke(actor, "Echo", b"x", cluster_key=host.keys.cluster,
                            host_id=host.keys.host_id, timeout=0.5)  # fmt: skip

    times = []
    for _ in range(kills):
        await both()
        pid = host.leaf.pid
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.02)
        while True:
            try:
                await both()
                break
            except Exception:
                await asyncio.sleep(0.01)
        times.append(time.monotonic() - killed)
        await asyncio.sleep(4)  # past the 3 s "stable" mark, as a leaf that crashes now and then
    bare = statistics.median(baseline)
    emit(
        "leaf_crash_recovery",
        kills=kills,
        seconds=spread(times),
        bare_nats_server_start_s=round(bare, 3),
        ratio_median_to_bare_start=round(statistics.median(times) / bare, 1),
        goal_s=2.0,
    )


def _stack_rss(host: Host) -> dict[str, float]:
    agent = psutil.Process().memory_info().rss
    assert host.registry is not None
    workers = sum(psutil.Process(p).memory_info().rss for p in host.registry.sandbox.worker_pids())
    return {"agent_mb": round(agent / 2**20, 1), "workers_mb": round(workers / 2**20, 1)}


async def rss_over_invocations(host: Host, client: LatticeClient, actor: str, calls: int) -> None:
    payload = bytes(range(256)) * 4
    window = 32

    async def run(count: int) -> None:
        for start in range(0, count, window):
            batch = min(window, count - start)
            replies = await asyncio.gather(
                *(client.invoke(actor, "Echo", payload, cluster_key=host.keys.cluster,
                                host_id=host.keys.host_id, timeout=30) for _ in range(batch))
            )  # fmt: skip
            assert all(r.response == payload for r in replies)

    await run(2_000)  # warm up: imports, caches, the first recycle standby
    before = _stack_rss(host)
    started = time.perf_counter()
    await run(calls // 2)
    halfway = _stack_rss(host)
    await run(calls - calls // 2)
    elapsed = time.perf_counter() - started
    after = _stack_rss(host)
    total_before = before["agent_mb"] + before["workers_mb"]
    total_after = after["agent_mb"] + after["workers_mb"]
    emit(
        "rss_over_invocations",
        calls=calls,
        before=before,
        halfway=halfway,
        after=after,
        ratio_after_to_before=round(total_after / total_before, 3),
        calls_per_s=round(calls / elapsed),
        recycled_workers=host.registry.sandbox.stats.recycled if host.registry else None,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200_000)
    asyncio.run(main(parser.parse_args()))
