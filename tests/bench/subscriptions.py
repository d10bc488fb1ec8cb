"""Messages delivered to an actor through a SUBSCRIPTION link, against a bare nats-py
subscriber on the same subject.

    .venv/bin/python tests/bench/subscriptions.py [--messages 5000] [--window 64] [--instances 1]

A device agent (real ``lattice-edge run``, standalone) runs wasmCloud's ``echo_messaging``
actor with ``SUBSCRIPTION=bench.actor``; on each message it publishes ``reply: <body>`` to
the message's reply subject through ``wasmcloud:messaging``. The baseline is a bare nats-py
subscriber in its own process doing the same (publish ``reply: <body>`` to the reply
subject) on ``bench.bare``. The same publisher drives both over the device's local port,
keeping ``--window`` messages outstanding (below the link's queue limit, so nothing is
dropped) and counting replies: messages handled per second, end to end. Then a burst of
10,000 with no reply subject: what the link delivers per second while overloaded, and how
many it drops. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lattice_testing import AgentProcess, agent_seed, free_port, run_cli

from agent.leaf.binary import find_nats_server

REPO = Path(__file__).resolve().parents[2]
ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"
ECHO_ACTOR = "MDJ5BWS6JXSWOZL2ZENW2D4FBSHQ5ZMFGEGJB33TLKYKMXTLLAXINU36"
BODY = b"21.5" * 16  # 64 bytes, a small telemetry reading
BURST = 10_000

BARE_SUBSCRIBER = """
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    async def handle(msg):
        if msg.reply:
            await nc.publish(msg.reply, b"reply: " + msg.data)
    await nc.subscribe("bench.bare", cb=handle)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def fixtures() -> Path:
    base = os.environ.get("LATTICE_EDGE_FIXTURES")
    root = Path(base) if base else REPO.parent / "shared" / "fixtures"
    folder = root / "third_party" if (root / "third_party").is_dir() else root
    if not (folder / "echo_messaging_v0.9.0.wasm").is_file():
        raise SystemExit(f"echo_messaging_v0.9.0.wasm not found in {folder}")
    return folder


async def measure(nc: Any, subject: str, messages: int, window: int) -> float:
    """Messages per second answered on ``subject`` with ``window`` outstanding."""
    inbox = f"_INBOX.bench.{os.getpid()}.{subject}"
    answered = 0
    done = asyncio.Event()
    slots = asyncio.Semaphore(window)

    async def on_reply(msg: Any) -> None:
        nonlocal answered
        assert msg.data == b"reply: " + BODY
        answered += 1
        slots.release()
        if answered == messages:
            done.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.flush()
    started = time.perf_counter()
    for _ in range(messages):
        await slots.acquire()
        await nc.publish(subject, BODY, reply=inbox)
    await nc.flush()
    await asyncio.wait_for(done.wait(), 120)
    rate = messages / (time.perf_counter() - started)
    await sub.unsubscribe()
    return rate


async def health(nc: Any, host_id: str) -> dict[str, Any]:
    reply = await nc.request(f"lattice-edge.host.{host_id}.health", b"", timeout=5)
    subscriptions: list[dict[str, Any]] = json.loads(reply.data)["subscriptions"]
    return subscriptions[0]


async def bench(args: argparse.Namespace, agent: AgentProcess, url: str, host_id: str) -> None:
    from agent.lattice.client import connect

    async with connect(url, seed=agent_seed(agent.data_dir)) as lattice:
        ref = f"file://{fixtures() / 'echo_messaging_v0.9.0.wasm'}"
        await lattice.start_actor(host_id, ref, args.instances, timeout=30)
        link = {"actor_id": ECHO_ACTOR, "contract_id": "wasmcloud:messaging",
                "provider_id": "VNATS", "values": {"SUBSCRIPTION": "bench.actor"}}  # fmt: skip
        ack = await lattice.request("wasmbus.ctl.default.linkdefs.put", link)
        assert ack["accepted"], ack
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_SUBSCRIBER, url], stdout=subprocess.PIPE, text=True
        )
        try:
            assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
            publisher = await nats.connect(url)  # an anonymous local app
            try:
                for subject in ("bench.bare", "bench.actor"):  # warm both paths
                    await measure(publisher, subject, 200, args.window)
                bare_rate = await measure(publisher, "bench.bare", args.messages, args.window)
                actor_rate = await measure(publisher, "bench.actor", args.messages, args.window)
                emit(
                    f"subscription_request_reply_{args.window}_outstanding",
                    instances=args.instances,
                    bare_subscriber_per_s=round(bare_rate),
                    actor_per_s=round(actor_rate),
                    ratio=round(actor_rate / bare_rate, 2),
                    messages=args.messages,
                )
                before = await health(lattice.nats, host_id)
                started = time.perf_counter()
                for _ in range(BURST):
                    await publisher.publish("bench.actor", BODY)  # no reply: nothing back
                await publisher.flush()
                while True:
                    now = await health(lattice.nats, host_id)
                    settled = now["delivered"] + now["dropped"]
                    if settled - before["delivered"] - before["dropped"] >= BURST:
                        break
                    await asyncio.sleep(0.02)
                seconds = time.perf_counter() - started
                delivered = now["delivered"] - before["delivered"]
                emit(
                    "subscription_burst_10k",
                    instances=args.instances,
                    delivered=delivered,
                    dropped=now["dropped"] - before["dropped"],
                    delivered_per_s=round(delivered / seconds),
                    seconds=round(seconds, 2),
                )
            finally:
                await publisher.close()
        finally:
            bare.kill()
            bare.wait()


def memory(pid: int) -> dict[str, float]:
    """PSS (MB) of the agent and of its nats-server child."""
    agent = psutil.Process(pid)
    leaf = [c for c in agent.children() if "nats-server" in c.name()]
    return {
        "agent_pss_mb": round(agent.memory_full_info().pss / 2**20, 1),
        "leaf_pss_mb": round(sum(c.memory_full_info().pss for c in leaf) / 2**20, 1),
    }


def init_agent(root: Path, port: int, extra: str = "") -> AgentProcess:
    config = root / "agent.toml"
    init = run_cli(
        "init", "--config", str(config), "--data-dir", str(root / "data"),
        "--listen", f"127.0.0.1:{port}", "--monitor", f"127.0.0.1:{free_port()}",
        "--trust-issuer", ECHO_ISSUER,
    )  # fmt: skip
    if init.returncode != 0:
        raise SystemExit(init.stderr)
    text = config.read_text()
    if extra:
        text = text.replace("[leaf]\n", "[leaf]\n" + extra, 1)
    config.write_text(text + f"\n[actors]\nfile_roots = ['{fixtures()}']\n")
    return AgentProcess(config, root / "data")


def mqtt_footprint(root: Path, idle: float) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    figures: dict[str, dict[str, float]] = {}
    secret = root / "esp1.pw"
    secret.write_text("bench-password\n")
    secret.chmod(0o600)
    mqtt_port = free_port()
    extra = (
        f"mqtt_listen = '127.0.0.1:{mqtt_port}'\n"
        f"mqtt_users = [{{name = 'esp1', password_file = '{secret}'}}]\n"
    )
    for label, config_extra in (("without_mqtt", ""), ("with_mqtt", extra)):
        agent = init_agent(root / label, free_port(), config_extra).start()
        client = None
        try:
            agent.wait_ready()
            if config_extra:
                client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32-1")
                client.username_pw_set("esp1", "bench-password")
                client.connect("127.0.0.1", mqtt_port)
                client.loop_start()
                client.subscribe("mcu/esp1/cmd", qos=1)
            time.sleep(idle)
            assert agent.process is not None
            figures[label] = memory(agent.process.pid)
        finally:
            if client is not None:
                client.disconnect()
                client.loop_stop()
            agent.terminate()
    emit(
        "mqtt_listener_footprint_idle",
        **{f"{label}_{key}": value for label, row in figures.items() for key, value in row.items()},
        leaf_delta_mb=round(
            figures["with_mqtt"]["leaf_pss_mb"] - figures["without_mqtt"]["leaf_pss_mb"], 1
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--window", type=int, default=64, help="outstanding messages")
    parser.add_argument("--instances", type=int, default=1, help="instances of the actor")
    parser.add_argument("--idle", type=float, default=5.0, help="idle seconds before memory")
    args = parser.parse_args()
    server = find_nats_server()
    emit("machine", python=platform.python_version(), arch=platform.machine(),
         cpus=psutil.cpu_count(), nats_server=server.version_text)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        port = free_port()
        agent = init_agent(root / "throughput", port).start()
        try:
            state = agent.wait_ready()
            asyncio.run(bench(args, agent, f"nats://127.0.0.1:{port}", state["host_id"]))
        finally:
            agent.terminate()
        mqtt_footprint(root, args.idle)


if __name__ == "__main__":
    main()
