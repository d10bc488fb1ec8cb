"""Store-and-forward: catch-up after an outage against native stream sourcing, forwarding
rate against a bare publisher, idle upstream bytes per day, and the memory it costs.

    .venv/bin/python tests/bench/forward.py [--outages 60,60,30,10] [--messages 10000] [--idle 180]

A hub in operator mode (the NGS stand-in) and a real device agent whose uplink runs through
a TCP proxy in this script, which can cut it while both servers keep running.

1. **Catch-up.** With the link cut for each of ``--outages`` seconds, ``--messages`` 200-byte
   messages are published on the device into the outbox and, in the same outage, into a
   plain leaf stream that a hub stream *sources* natively through ``$JS.<leaf domain>.API``
   (the baseline). The link comes back; the figure is the time from then to the last
   message at the hub, for each, and the time the leaf took to reconnect.
2. **Rate.** With the link up, the same number of messages go through the outbox as fast as
   a local producer can publish; the baseline is a bare nats-py publisher on the device's
   local port publishing to the same hub stream with the forwarder's window of PubAcks.
3. **Idle.** A fresh agent with forwarding, one without, and a bare nats-server leaf with the
   same remote sit idle for ``--idle`` seconds, each through its own counting proxy, while a
   cloud client watches the lattice's events (as wadm would): bytes per day, scaled. Then
   the agents' memory (PSS), forwarding on and off.

One JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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

from forward_testing import (
    CuttableLink,
    ProxiedHub,
    connect_hub,
    create_uplink,
    device_config,
    payload,
)
from lattice_testing import AgentProcess, agent_seed, free_port, http_json, wait_until

from agent.config import load_config
from agent.forward.uplink import UPLINK_STREAM
from agent.leaf.binary import find_nats_server

WINDOW = 256
DAY = 86400.0


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


class Device:
    """An agent process with its own proxied uplink to the hub."""

    def __init__(
        self, root: Path, hub: ProxiedHub, *, forward: bool, heartbeat: float,
        port: int | None = None,
    ) -> None:  # fmt: skip
        self.link = CuttableLink(hub.leaf_port, port=port)
        forward_table = "subjects = ['bench.fwd.>']" if forward else "enabled = false"
        self.config = device_config(
            root, upstream_url=f"nats-leaf://127.0.0.1:{self.link.port}", creds=hub.leaf_creds,
            forward=forward_table, heartbeat_s=heartbeat,
        )  # fmt: skip
        self.settings = load_config(self.config, env={})
        self.agent = AgentProcess(self.config, root / "data")
        self.host_id = ""
        self.domain = ""

    @property
    def url(self) -> str:
        return f"nats://{self.settings.leaf.listen}"

    async def start(self) -> None:
        await self.link.restore()
        self.agent.start()
        state = await asyncio.to_thread(self.agent.wait_ready)
        self.host_id, self.domain = state["host_id"], state["jetstream_domain"]
        monitor = self.settings.leaf.monitor.port
        await asyncio.to_thread(
            wait_until, lambda: (http_json(monitor, "/leafz") or {}).get("leafnodes"), 30, "link"
        )

    async def agent_client(self) -> Any:
        return await nats.connect(self.url, nkeys_seed_str=agent_seed(self.settings.host.data_dir))

    def pss_mb(self) -> dict[str, float]:
        assert self.agent.process is not None
        agent = psutil.Process(self.agent.process.pid)
        leaf = psutil.Process(self.agent.leaf_pid() or 0)
        return {
            "agent_pss_mb": round(agent.memory_full_info().pss / 2**20, 1),
            "leaf_pss_mb": round(leaf.memory_full_info().pss / 2**20, 1),
        }

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.agent.terminate)
        self.agent.kill_all()
        await self.link.close()


async def count(js: Any, stream: str) -> int:
    try:
        return int((await js.stream_info(stream)).state.messages)
    except (nats.errors.Error, TimeoutError):
        return -1


async def until_count(js: Any, stream: str, target: int, timeout: float) -> float | None:
    """Seconds until ``stream`` holds ``target`` messages (polled every 20 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await count(js, stream) >= target:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    return None


async def native_streams(device: Device, cloud: Any) -> None:
    """A plain Limits stream on the leaf and a hub stream that sources it natively."""
    local = await device.agent_client()
    try:
        await local.jetstream().add_stream(name="BENCH_NATIVE_OUT", subjects=["bench.native.>"])
    finally:
        await local.close()
    api = f"$JS.{device.domain}.API"
    config = {
        "name": "BENCH_NATIVE_IN", "storage": "file", "retention": "limits",
        "sources": [{"name": "BENCH_NATIVE_OUT", "external": {"api": api}}],
    }  # fmt: skip
    reply = await cloud.request(
        "$JS.API.STREAM.CREATE.BENCH_NATIVE_IN", json.dumps(config).encode(), timeout=5
    )
    answer = json.loads(reply.data)
    if "error" in answer:
        raise SystemExit(f"cannot create the sourcing stream: {answer['error']}")


async def catch_up(args: argparse.Namespace, device: Device, hub: ProxiedHub) -> None:
    cloud = await connect_hub(hub)
    js = cloud.jetstream()
    producer = await nats.connect(device.url)
    try:
        await native_streams(device, cloud)
        for index in range(10):  # both paths set up and flowing before the first cut
            await producer.publish("bench.fwd.warm", payload(index))
            await producer.publish("bench.native.warm", payload(index))
        await producer.flush()
        for stream in (UPLINK_STREAM, "BENCH_NATIVE_IN"):
            if await until_count(js, stream, 10, 60) is None:
                raise SystemExit(f"{stream} did not fill before the outage")
        held = 10
        for outage in args.outages:
            held += args.messages
            await one_outage(args, outage, held, device, producer, js)
    finally:
        await producer.close()
        await cloud.close()


async def one_outage(
    args: argparse.Namespace, outage: float, target: int, device: Device, producer: Any,
    js: Any,
) -> None:  # fmt: skip
    """Cut the link for ``outage`` s with ``args.messages`` queued on both paths; time the
    catch-up of each from the moment the link is restored (polled together every 20 ms)."""
    await device.link.cut()
    cut_at = time.monotonic()
    for index in range(args.messages):
        await producer.publish("bench.fwd.data", payload(index, args.size))
        await producer.publish("bench.native.data", payload(index, args.size))
        if index % 1000 == 999:
            await producer.flush()
    await producer.flush()
    await asyncio.sleep(max(0.0, outage - (time.monotonic() - cut_at)))
    await device.link.restore()
    restored = time.monotonic()
    leafz = device.settings.leaf.monitor.port
    done: dict[str, float | None] = {"leaf": None, "forwarder": None, "native": None}
    while time.monotonic() - restored < args.native_timeout:
        now = time.monotonic() - restored
        if done["leaf"] is None and (http_json(leafz, "/leafz") or {}).get("leafnodes"):
            done["leaf"] = now
        if done["forwarder"] is None and await count(js, UPLINK_STREAM) >= target:
            done["forwarder"] = time.monotonic() - restored
        if done["native"] is None and await count(js, "BENCH_NATIVE_IN") >= target:
            done["native"] = time.monotonic() - restored
        if all(value is not None for value in done.values()):
            break
        await asyncio.sleep(0.02)
    ours, native = done["forwarder"], done["native"]
    emit(
        "catch_up_after_outage",
        outage_s=outage, messages=args.messages, size_b=args.size,
        leaf_reconnect_s=_r(done["leaf"]), forwarder_s=_r(ours), native_sourcing_s=_r(native),
        native_timeout_s=args.native_timeout if native is None else None,
        ratio_native_to_forwarder=round(native / ours, 1) if native and ours else None,
        goal_s=2.0, goal_ratio=20,
    )  # fmt: skip


def _r(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


async def rate(args: argparse.Namespace, device: Device, hub: ProxiedHub) -> None:
    cloud = await connect_hub(hub)
    js = cloud.jetstream()
    try:
        base = await count(js, UPLINK_STREAM)
        producer = await nats.connect(device.url)
        started = time.monotonic()
        for index in range(args.messages):
            await producer.publish("bench.fwd.rate", payload(index, args.size))
        await producer.flush()
        await producer.close()
        done = await until_count(js, UPLINK_STREAM, base + args.messages, 120)
        forwarder = args.messages / (time.monotonic() - started) if done is not None else None

        bare = await device.agent_client()
        subject = f"lattice-edge.uplink.{device.host_id}.bench.bare"
        inbox = bare.new_inbox()
        acked = 0
        finished = asyncio.Event()
        slots = asyncio.Semaphore(WINDOW)

        async def on_ack(_msg: Any) -> None:
            nonlocal acked
            acked += 1
            slots.release()
            if acked == args.messages:
                finished.set()

        await bare.subscribe(f"{inbox}.*", cb=on_ack)
        await bare.flush()
        await asyncio.sleep(0.5)  # the reply interest crosses the leaf
        started = time.monotonic()
        for index in range(args.messages):
            await slots.acquire()
            await bare.publish(
                subject, payload(index, args.size), reply=f"{inbox}.{index}",
                headers={"Nats-Msg-Id": f"bare:{index}"},
            )  # fmt: skip
        await asyncio.wait_for(finished.wait(), 120)
        baseline = args.messages / (time.monotonic() - started)
        await bare.close()
        emit(
            "forwarding_rate", messages=args.messages, size_b=args.size, window=WINDOW,
            bare_publisher_with_acks_per_s=round(baseline),
            forwarder_per_s=round(forwarder) if forwarder else None,
            ratio=round(forwarder / baseline, 2) if forwarder else None,
        )  # fmt: skip
    finally:
        await cloud.close()


def bare_leaf(workdir: Path, hub: ProxiedHub, link: CuttableLink, binary: Path) -> Any:
    conf = workdir / "bare-leaf.conf"
    conf.write_text(
        f"server_name: bare-leaf\nlisten: 127.0.0.1:{free_port()}\n"
        f'jetstream {{ store_dir: "{workdir / "bare-js"}", domain: bare }}\n'
        f'leafnodes {{ remotes = [ {{ url: "nats-leaf://127.0.0.1:{link.port}", '
        f'credentials: "{hub.leaf_creds}" }} ] }}\n'
    )
    return subprocess.Popen(
        [str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def idle(args: argparse.Namespace, workdir: Path, hub: ProxiedHub, binary: Path) -> None:
    on = Device(workdir / "idle-on", hub, forward=True, heartbeat=args.heartbeat)
    off = Device(workdir / "idle-off", hub, forward=False, heartbeat=args.heartbeat)
    bare_link = CuttableLink(hub.leaf_port)
    await bare_link.restore()
    leaf = bare_leaf(workdir, hub, bare_link, binary)
    watcher = await connect_hub(hub)
    events = 0

    async def on_event(_msg: Any) -> None:
        nonlocal events
        events += 1

    await watcher.subscribe("wasmbus.evt.>", cb=on_event)
    try:
        await on.start()
        await off.start()
        await asyncio.sleep(5)  # start-up traffic (subscriptions, host_started) is not idle
        links = {"forwarding_on": on.link, "forwarding_off": off.link, "bare_leaf": bare_link}
        before = {name: (link.up_bytes, link.down_bytes) for name, link in links.items()}
        await asyncio.sleep(args.idle)
        for name, link in links.items():
            up = link.up_bytes - before[name][0]
            down = link.down_bytes - before[name][1]
            emit(
                "idle_upstream_bytes_per_day", device=name, measured_s=args.idle,
                heartbeat_interval_s=args.heartbeat,
                up_bytes_per_day=round(up * DAY / args.idle),
                down_bytes_per_day=round(down * DAY / args.idle),
                total_mb_per_day=round((up + down) * DAY / args.idle / 1e6, 2),
            )  # fmt: skip
        emit("memory_idle", forwarding_on=on.pss_mb(), forwarding_off=off.pss_mb())
    finally:
        await watcher.close()
        leaf.terminate()
        leaf.wait(10)
        await bare_link.close()
        await on.stop()
        await off.stop()


async def run(args: argparse.Namespace, workdir: Path) -> None:
    server = find_nats_server()
    emit("machine", python=platform.python_version(), arch=platform.machine(),
         cpus=psutil.cpu_count(), nats_server=server.version_text)  # fmt: skip
    proxy_port = free_port()
    hub = ProxiedHub(workdir / "hub", server.path, proxy_port)
    hub.start()
    try:
        await create_uplink(hub)
        if args.outages or args.messages:
            device = Device(workdir / "device", hub, forward=True, heartbeat=30.0,
                            port=proxy_port)  # fmt: skip
            await device.start()
            try:
                if args.outages:
                    await catch_up(args, device, hub)
                await rate(args, device, hub)
            finally:
                await device.stop()
        if args.idle > 0:
            await idle(args, workdir, hub, server.path)
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--outages", type=lambda text: [float(x) for x in text.split(",") if x],
        default=[60.0, 60.0, 30.0, 10.0],
        help="seconds the link is cut, one run each (60,60,30,10: the first outage after the "
        "native source is set up recovers differently from the next ones)",
    )  # fmt: skip
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--size", type=int, default=200, help="bytes per message")
    parser.add_argument("--native-timeout", type=float, default=180.0)
    parser.add_argument("--idle", type=float, default=180.0, help="seconds of idle to measure")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat interval, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(run(args, Path(scratch)))


if __name__ == "__main__":
    main()
