"""Fleet enrollment (and rollout) figures, each against a baseline measured in the same run.

    .venv/bin/python tests/bench/fleet.py [--enrollments 200] [--devices 3] [--hosts 10]

A hub in operator mode with a ``full`` resolver (the NGS stand-in), one ``fleet serve``:

* enrollments per second through that one ``serve``: complete challenge → sign → spend
  exchanges, 8 in flight over one bootstrap connection; the baseline is the same number of
  request pairs to a bare nats-py responder on the hub that does the one durable write an
  enrollment cannot do without (a KV ``create``);
* time from ``lattice-edge enroll`` on a running agent to its first heartbeat at the hub;
  the baseline is the bare start of the same CLI (``lattice-edge --version``), the floor of
  any command on the device;
* time from ``fleet deploy`` until ``--hosts`` real, enrolled agents all report the actor
  started (its ``actor_started`` events at the hub); the baseline is starting another
  signing of the same module, from the same object store, on the same hosts by hand: one
  ``cmd.{host}.la`` each from the hub, all at once.

One JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_testing import Fleet, FleetHub, ServeProcess, enroll, init_device, ok
from lattice_testing import CLI, AgentProcess, run_cli

from agent.fleet import protocol
from agent.identity import jwt
from agent.identity.keys import KeyKind, generate, write_seed_file
from agent.leaf.binary import find_nats_server

IN_FLIGHT = 8
REPO = Path(__file__).resolve().parents[2]


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


async def enrollments_per_second(fleet: Fleet, hub: FleetHub, count: int) -> dict[str, float]:
    admin = json.loads(ok(run_cli("fleet", "token", "create", "--dir", str(fleet.path),
                                  "--count", str(count), "--json")))  # fmt: skip
    tokens = [t["token"] for t in admin["tokens"]]
    name = jwt.decode(jwt.read_creds(fleet.bootstrap).jwt).claims["name"]
    base = f"lattice-edge.fleet.{fleet.fleet_id}.enroll"
    boot = await nats.connect(hub.client_url, user_credentials=str(fleet.bootstrap),
                              inbox_prefix=f"_INBOX_LE.{name}")  # fmt: skip

    async def one(token: str) -> None:
        token_id = token.split(".")[2]
        user, host = generate(KeyKind.USER), generate(KeyKind.SERVER)
        challenge = json.loads((await boot.request(
            f"{base}.challenge", protocol.canonical_json({"token_id": token_id}), timeout=10
        )).data)  # fmt: skip
        message = protocol.enroll_message(
            fleet.fleet_id, challenge["nonce"], token_id, user.public_key, host.public_key
        )
        body = protocol.canonical_json({
            "token": token, "nonce": challenge["nonce"], "user_key": user.public_key,
            "host_key": host.public_key, "user_signature": protocol.b64(user.sign(message)),
            "host_signature": protocol.b64(host.sign(message)), "facts": {}, "labels": {},
        })  # fmt: skip
        reply = json.loads((await boot.request(f"{base}.complete", body, timeout=10)).data)
        assert "user_jwt" in reply, reply

    rate = await run_window(one, tokens)
    await boot.close()

    # Baseline: the same request pairs to a bare responder doing one KV create each.
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    kv = await cloud.jetstream().create_key_value(bucket="BENCH_BASELINE", history=1)

    async def answer(msg: Any) -> None:
        if msg.subject.endswith("complete"):
            await kv.create(f"k{time.monotonic_ns()}", msg.data[:64])
        await msg.respond(b'{"ok":true}')

    await cloud.subscribe("bench.baseline.*", queue="q", cb=answer)
    client = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))

    async def pair(_token: str) -> None:
        await client.request("bench.baseline.challenge", b'{"token_id":"X"}', timeout=10)
        await client.request("bench.baseline.complete", b"x" * 600, timeout=10)

    baseline = await run_window(pair, tokens)
    await client.close()
    await cloud.close()
    return {"enrollments_per_s": rate, "baseline_per_s": baseline}


async def run_window(work: Any, items: list[str]) -> float:
    queue = list(reversed(items))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return len(items) / (time.perf_counter() - started)


async def enroll_to_heartbeat(
    fleet: Fleet, hub: FleetHub, root: Path, runs: int
) -> dict[str, float]:
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    times: list[float] = []
    try:
        for run in range(runs):
            config, data, host, _ = init_device(root, f"bench-{run}")
            agent = AgentProcess(config, data).start()
            agent.wait_ready()
            beats = await cloud.subscribe("wasmbus.evt.default.host_heartbeat")
            await cloud.flush()
            started = time.perf_counter()
            result = await asyncio.to_thread(enroll, fleet, config, fleet.token("bench=yes"))
            assert result.returncode == 0, result.stderr
            while True:
                beat = json.loads((await beats.next_msg(timeout=60)).data)
                if beat["source"] == host:
                    break
            times.append(time.perf_counter() - started)
            await beats.unsubscribe()
            agent.terminate()
    finally:
        await cloud.close()
    floor = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([CLI, "--version"], capture_output=True, check=True)
        floor.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "cli_start_s": statistics.median(floor)}


async def deploy_to_hosts(fleet: Fleet, hub: FleetHub, root: Path, count: int) -> dict[str, Any]:
    from agent.fleet import subjects
    from agent.fleet.deploy import upload_module
    from agent.fleet.deployments import object_name
    from agent.fleet.fleetdir import load_fleet
    from agent.identity.wascap import sign_module

    agents: list[AgentProcess] = []
    hosts: list[str] = []
    for index in range(count):
        config, data, host, _ = init_device(root, f"roll-{index}")
        ok(enroll(fleet, config, fleet.token("bench=rollout")))
        agents.append(AgentProcess(config, data).start())
        hosts.append(host)
    for agent in agents:
        agent.wait_ready(60)
    issuer = load_issuer(fleet)
    echo = (REPO / "tests" / "fixtures" / "guests" / "echo.wasm").read_bytes()
    deployed, _ = sign_module(echo, issuer, "bench-deployed", module_key=generate(KeyKind.MODULE))
    by_hand, hand_claims = sign_module(echo, issuer, "bench-by-hand",
                                       module_key=generate(KeyKind.MODULE))  # fmt: skip
    module_path = root / "bench-deployed.wasm"
    module_path.write_bytes(deployed)
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    try:
        bucket = subjects.actor_bucket(fleet.fleet_id)
        digest = await upload_module(cloud, bucket, by_hand)
        domain = load_fleet(fleet.path).js_domain
        ref = f"nats-os://{bucket}/{object_name(digest)}?domain={domain}"

        async def started_everywhere(start: Any, actor: str) -> float:
            seen: set[str] = set()
            done = asyncio.Event()

            async def on_event(msg: Any) -> None:
                event = json.loads(msg.data)
                if event.get("type", "").endswith("actor_started") and (
                    event["data"].get("public_key") == actor and event["source"] in hosts
                ):
                    seen.add(event["source"])
                    if len(seen) == len(hosts):
                        done.set()

            sub = await cloud.subscribe("wasmbus.evt.default", cb=on_event)
            await cloud.flush()
            began = time.perf_counter()
            await start()
            await asyncio.wait_for(done.wait(), 180)
            await sub.unsubscribe()
            return time.perf_counter() - began

        async def by_hand_start() -> None:
            body = json.dumps({"actor_ref": ref, "count": 1}).encode()
            await asyncio.gather(*(
                cloud.request(f"wasmbus.ctl.default.cmd.{h}.la", body, timeout=10) for h in hosts
            ))  # fmt: skip

        baseline = await started_everywhere(by_hand_start, hand_claims.subject)

        async def deploy_start() -> None:
            result = await asyncio.to_thread(run_cli, "fleet", "deploy", "--dir", str(fleet.path),
                                             "bench", str(module_path), "--selector",
                                             "bench=rollout")  # fmt: skip
            assert result.returncode == 0, result.stderr

        actor = sign_claims_subject(deployed)
        seconds = await started_everywhere(deploy_start, actor)
    finally:
        await cloud.close()
        for agent in agents:
            agent.terminate()
    return {"hosts": count, "seconds": round(seconds, 2), "by_hand_s": round(baseline, 2),
            "ratio": round(seconds / baseline, 2)}  # fmt: skip


def load_issuer(fleet: Fleet) -> Any:
    from agent.identity.keys import load_seed_file

    return load_seed_file(fleet.path.parent / "bench-issuer.nk")


def sign_claims_subject(module: bytes) -> str:
    from agent.identity.wascap import extract_claims

    claims = extract_claims(module)
    assert claims is not None
    return claims.subject


_IMPORT_PROBE = """
import gc, json, sys, psutil
import agent.host, agent.lattice.control, agent.leaf.monitor, nats  # a running agent's imports
process = psutil.Process()
gc.collect()
base = process.memory_full_info().uss
modules = set(sys.modules)
for name in sys.argv[1:]:
    __import__(name)
gc.collect()
print(json.dumps({"base_kib": base // 1024,
                  "delta_kib": (process.memory_full_info().uss - base) // 1024,
                  "modules": sorted(set(sys.modules) - modules)}))
"""


def import_cost(*modules: str) -> dict[str, Any]:
    """USS the agent process grows by when it imports ``modules`` (median of 3 processes),
    from byte-code as an installed agent imports it (a first run writes the .pyc files to
    a scratch prefix; compiling from source would count the compiler's memory too)."""
    with tempfile.TemporaryDirectory(prefix="fleet-pyc-") as prefix:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = prefix
        probe = [sys.executable, "-c", _IMPORT_PROBE, *modules]
        runs = []
        for _ in range(4):
            out = subprocess.run(probe, capture_output=True, text=True, check=True, env=env)
            runs.append(json.loads(out.stdout))
    measured = sorted(runs[1:], key=lambda r: r["delta_kib"])
    return measured[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrollments", type=int, default=200)
    parser.add_argument("--devices", type=int, default=3, help="enroll-to-heartbeat runs")
    parser.add_argument("--hosts", type=int, default=10, help="agents for the rollout (0: skip)")
    args = parser.parse_args()
    for label, modules in (
        ("every agent: the device link", ("agent.device_link",)),
        (
            "an enrolled agent: renewal codecs",
            ("agent.device_link", "agent.fleet.request", "agent.fleet.subjects"),
        ),
    ):
        cost = import_cost(*modules)
        emit(
            f"memory: {label}",
            delta_kib=cost["delta_kib"],
            agent_imports_kib=cost["base_kib"],
            ratio=round(cost["delta_kib"] / cost["base_kib"], 4),
            modules=cost["modules"],
        )
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        with FleetHub(root / "hub", find_nats_server().path) as hub:
            issuer = generate(KeyKind.ACCOUNT)
            write_seed_file(root / "bench-issuer.nk", issuer)
            fleet = await Fleet.create(hub, root / "fleet", "--trust-issuer", issuer.public_key)
            serve = ServeProcess(fleet.path).start()
            try:
                rates = await enrollments_per_second(fleet, hub, args.enrollments)
                per_s, baseline = rates["enrollments_per_s"], rates["baseline_per_s"]
                emit(
                    "enrollments per second through one fleet serve",
                    enrollments=args.enrollments,
                    in_flight=IN_FLIGHT,
                    per_s=round(per_s, 1),
                    baseline_per_s=round(baseline, 1),
                    ratio=round(per_s / baseline, 3),
                )
                beat = await enroll_to_heartbeat(fleet, hub, root, args.devices)
                emit(
                    "enroll to first heartbeat at the hub (median)",
                    runs=args.devices,
                    seconds=round(beat["seconds"], 2),
                    cli_start_s=round(beat["cli_start_s"], 2),
                    ratio=round(beat["seconds"] / beat["cli_start_s"], 2),
                )
                if args.hosts:
                    figure = await deploy_to_hosts(fleet, hub, root, args.hosts)
                    emit("deploy until every host has started the actor", **figure)
            finally:
                serve.stop()


if __name__ == "__main__":
    asyncio.run(main())
