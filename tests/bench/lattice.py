"""Actor RPC across the leaf, against a bare nats-py responder on the same path.

    .venv/bin/python tests/bench/lattice.py [--calls 2000] [--seconds 0]

A hub in operator mode (the NGS stand-in) and a device agent bridged to it. A client on
the hub sends 1 KiB echo invocations through the leaf to the demo actor and back,
sequentially and with 32 in flight; the baseline is a plain nats-py echo responder on the
device's local port, measured over the same hub → leaf path in the same run. Invocations
are signed before the clock starts: signing is the caller's cost, not the host's. Then ten
distinct actors are started and the whole stack's memory (agent, nats-server, sandbox
workers) is reported. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lattice_testing import AgentProcess, Hub, free_port, run_cli, wait_until

from agent.identity.keys import KeyKind, generate, load_seed_file
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient
from agent.lattice.invocation import (
    InvocationResponse,
    WasmCloudEntity,
    new_invocation,
)
from agent.leaf.binary import find_nats_server
from agent.runtime.demo import DEMO_ISSUER

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "agent" / "runtime" / "demo" / "echo.wasm"
ECHO_GUEST = REPO / "tests" / "fixtures" / "guests" / "echo.wasm"
ISSUER_SEED = REPO / "tests" / "fixtures" / "demo_issuer.nk"
PAYLOAD = bytes(range(256)) * 4
IN_FLIGHT = 32


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


async def measure(send: Any, bodies: list[bytes], window: int) -> float:
    """Calls per second sending ``bodies`` with ``window`` requests in flight."""
    started = time.perf_counter()
    if window == 1:
        for body in bodies:
            await send(body)
    else:
        queue = list(reversed(bodies))

        async def worker() -> None:
            while queue:
                await send(queue.pop())

        await asyncio.gather(*(worker() for _ in range(window)))
    return len(bodies) / (time.perf_counter() - started)


def stack_memory(agent_pid: int) -> dict[str, float]:
    root = psutil.Process(agent_pid)
    processes = [root, *root.children(recursive=True)]
    rss = pss = 0
    for process in processes:
        info = process.memory_full_info()
        rss += info.rss
        pss += info.pss
    return {
        "processes": len(processes),
        "rss_mb": round(rss / 2**20, 1),
        "pss_mb": round(pss / 2**20, 1),
    }


async def run(args: argparse.Namespace, workdir: Path) -> None:
    server = find_nats_server()
    emit("machine", python=platform.python_version(), arch=platform.machine(),
         cpus=psutil.cpu_count(), nats_server=server.version_text)  # fmt: skip
    cloud_key = generate(KeyKind.CLUSTER)
    with Hub(workdir / "hub", server.path) as hub:
        client_port, monitor_port = free_port(), free_port()
        config, data = workdir / "agent.toml", workdir / "data"
        init = run_cli(
            "init", "--config", str(config), "--data-dir", str(data),
            "--listen", f"127.0.0.1:{client_port}", "--monitor", f"127.0.0.1:{monitor_port}",
            "--upstream", hub.leaf_url, "--upstream-creds", str(hub.leaf_creds),
            "--trust-issuer", DEMO_ISSUER, "--cluster-issuer", cloud_key.public_key,
        )  # fmt: skip
        if init.returncode != 0:
            raise SystemExit(init.stderr)
        host_id = init.stdout.strip()
        agent = AgentProcess(config, data).start()
        try:
            agent.wait_ready()
            wait_until(lambda: hub.leaf_connections() >= 1, 30, "the leaf link")
            await bench(args, hub, host_id, client_port, cloud_key, agent, workdir)
        finally:
            agent.terminate()


async def bench(
    args: argparse.Namespace, hub: Hub, host_id: str, client_port: int, cloud_key: Any,
    agent: AgentProcess, workdir: Path,
) -> None:  # fmt: skip
    device = await nats.connect(f"nats://127.0.0.1:{client_port}")
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    lattice = LatticeClient(cloud)
    try:
        demo = agent.data_dir / "actors" / "echo.wasm"  # inside the default file root
        demo.parent.mkdir(parents=True, exist_ok=True)
        demo.write_bytes(DEMO.read_bytes())
        started = await lattice.start_actor(host_id, f"file://{demo}")
        actor = started["public_key"]
        rpc_subject = f"wasmbus.rpc.default.{actor}"

        async def responder(msg: Any) -> None:
            await msg.respond(msg.data)

        await device.subscribe("bench.echo", cb=responder)
        await device.flush()
        # interest crosses the leaf asynchronously; wait until both paths answer
        for subject, body in (("bench.echo", PAYLOAD), (rpc_subject, None)):
            deadline = time.monotonic() + 20
            while True:
                try:
                    probe = body or invocation(actor, cloud_key, host_id).encode()
                    await cloud.request(subject, probe, timeout=1)
                    break
                except (nats.errors.NoRespondersError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        async def bare(body: bytes) -> None:
            reply = await cloud.request("bench.echo", body, timeout=10)
            assert reply.data == PAYLOAD

        async def actor_call(body: bytes) -> None:
            reply = await cloud.request(rpc_subject, body, timeout=10)
            response = InvocationResponse.decode(reply.data)
            assert response.error is None and response.msg == PAYLOAD, response.error

        calls = args.calls
        for window, label in ((1, "sequential"), (IN_FLIGHT, f"{IN_FLIGHT}_in_flight")):
            bare_bodies = [PAYLOAD] * calls
            actor_bodies = [invocation(actor, cloud_key, host_id).encode() for _ in range(calls)]
            await measure(bare, bare_bodies[:100], window)  # warm both paths
            await measure(actor_call, actor_bodies[:100], window)
            bare_rate = await measure(bare, bare_bodies, window)
            actor_rate = await measure(actor_call, actor_bodies, window)
            emit(
                f"rpc_1kib_echo_{label}",
                bare_responder_per_s=round(bare_rate),
                actor_per_s=round(actor_rate),
                ratio=round(actor_rate / bare_rate, 2),
                calls=calls,
                goal_ratio=0.5 if window > 1 else None,
            )

        await lattice.stop_actor(host_id, actor)
        issuer = load_seed_file(ISSUER_SEED, KeyKind.ACCOUNT)
        module = ECHO_GUEST.read_bytes()
        for index in range(10):
            signed, _ = sign_module(module, issuer, f"bench echo {index}")
            path = agent.data_dir / "actors" / f"echo-{index}.wasm"
            path.write_bytes(signed)
            await lattice.start_actor(host_id, f"file://{path}")
        await asyncio.sleep(args.settle)
        assert agent.process is not None
        emit("stack_memory_10_actors", **stack_memory(agent.process.pid), goal_pss_mb=60)
    finally:
        await device.close()
        await cloud.close()


def invocation(actor: str, key: Any, host_id: str) -> Any:
    return new_invocation(
        WasmCloudEntity(key.public_key), WasmCloudEntity(actor), "Echo", PAYLOAD,
        cluster_key=key, host_id=host_id,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(run(args, Path(scratch)))


if __name__ == "__main__":
    main()
