"""Store-and-forward with real parts, in-process: a device host (run_host, its real leaf)
bridged to an operator-mode hub with the uplink stream, local producers of every kind, an
outage longer than the budget, refusals, a missing hub stream, and ``status``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import nats
import pytest
from forward_testing import (
    connect_device,
    connect_hub,
    create_uplink,
    device_config,
    eventually,
    hub_count,
    hub_messages,
    index_of,
    payload,
    wait_hub_count,
)
from lattice_testing import Hub, run_cli
from test_old_nats_server import old_nats_server  # noqa: F401  (a fixture)

from agent.config import Config, load_config
from agent.forward.forwarder import FORWARD_STATE_FILE, Forwarder
from agent.forward.plan import OUTBOX_STREAM
from agent.host import Host
from agent.identity.host import ensure_host_keys
from agent.launch import run_host

pytestmark = pytest.mark.integration


def config_for(tmp_path: Path, hub: Hub, **options: Any) -> Config:
    path = device_config(
        tmp_path / "device", upstream_url=hub.leaf_url, creds=hub.leaf_creds, **options
    )
    return load_config(path, env={})


def forwarder(host: Host) -> Forwarder:
    assert host.forwarder is not None
    return host.forwarder


def outbox_disk_bytes(data_dir: Path) -> int:
    """What the outbox's files take on disk (allocated blocks, or length if larger)."""
    total = 0
    for directory in data_dir.glob(f"jetstream/**/streams/{OUTBOX_STREAM}"):
        for root, _dirs, files in os.walk(directory):
            for name in files:
                try:
                    info = os.stat(Path(root) / name)
                except FileNotFoundError:  # a block freed as we looked
                    continue
                total += max(info.st_size, info.st_blocks * 512)
    return total


async def watch_events(host: Host, into: list[dict[str, Any]]) -> None:
    async def collect(msg: Any) -> None:
        into.append(json.loads(msg.data))

    await host.nats.subscribe("wasmbus.evt.default.>", cb=collect)


async def test_local_producers_reach_the_hub_once_with_their_headers(
    tmp_path: Path, hub: Hub
) -> None:
    await create_uplink(hub)
    async with run_host(config_for(tmp_path, hub)) as host:
        host_id = host.keys.host_id
        anon = await connect_device(host.client_url)
        js = anon.jetstream(timeout=2)
        headers = {"Nats-Msg-Id": "p-1", "Nats-Expected-Stream": OUTBOX_STREAM, "X-Unit": "C"}
        ack = await js.publish("sensors.temp", b"21.5", headers=headers)
        assert ack.stream == OUTBOX_STREAM and not ack.duplicate
        again = await js.publish("sensors.temp", b"21.5", headers={"Nats-Msg-Id": "p-1"})
        assert again.duplicate  # the outbox's own window dedups a producer's retry
        await anon.publish("sensors.plain", b"plain")
        await anon.flush()
        with pytest.raises(nats.errors.Error):  # telemetry is the agent's, not anyone's
            await js.publish(f"lattice-edge.telemetry.{host_id}.cpu", b"forged", timeout=1)
        await host.nats.publish(f"lattice-edge.telemetry.{host_id}.cpu", b"42")

        await wait_hub_count(hub, 3, 20)
        messages = {m.subject.removeprefix(f"lattice-edge.uplink.{host_id}."): m
                    for m in await hub_messages(hub)}  # fmt: skip
        assert set(messages) == {"sensors.temp", "sensors.plain",
                                 f"lattice-edge.telemetry.{host_id}.cpu"}  # fmt: skip
        temp = messages["sensors.temp"]
        assert temp.data == b"21.5"
        assert temp.headers == {
            "X-Unit": "C",
            "Lattice-Edge-Origin-Msg-Id": "p-1",
            "Nats-Msg-Id": f"{host_id}:1",
        }
        assert messages["sensors.plain"].headers == {"Nats-Msg-Id": f"{host_id}:2"}

        # What the cloud publishes on forwarded subjects is not captured by the device.
        cloud = await connect_hub(hub)
        await cloud.publish("sensors.temp", b"from the cloud")
        await cloud.publish("lattice-edge.telemetry.NOTME.cpu", b"from the cloud")
        await cloud.flush()
        await cloud.close()
        await asyncio.sleep(0.5)
        assert (await forwarder(host).outbox.state()).messages == 0
        assert await hub_count(hub) == 3

        report = host.health()["forward"]
        assert report["state"] == "forwarding"
        assert (report["forwarded"], report["dropped"], report["refused"]) == (3, 0, 0)
        await anon.close()


async def test_an_outage_longer_than_the_budget_drops_the_oldest_and_reports_it(
    tmp_path: Path, hub: Hub
) -> None:
    events: list[dict[str, Any]] = []
    await create_uplink(hub)
    config = config_for(tmp_path, hub, budgets="store_forward_mb = 1")
    budget = 1024 * 1024
    total = 3000
    async with run_host(config) as host:
        await watch_events(host, events)
        hub.stop()
        await eventually(lambda: _is(host.uplink.connected, False), 10, "the uplink to drop")
        anon = await connect_device(host.client_url)
        peak = 0
        for start in range(0, total, 250):
            for index in range(start, start + 250):
                await anon.publish("sensors.bulk", payload(index))
            await anon.flush()
            peak = max(peak, outbox_disk_bytes(config.host.data_dir))
        await anon.close()

        async def settled() -> dict[str, Any] | None:
            report: dict[str, Any] = host.health()["forward"]
            waiting = report["waiting_messages"] or 0
            return report if report["dropped"] and report["dropped"] + waiting == total else None

        report = await eventually(
            settled, 15, "the drops to be counted", lambda: host.health()["forward"]
        )
        held = report["waiting_messages"]
        assert 0 < held < total
        assert report["waiting_bytes"] <= forwarder(host).plan.max_bytes
        assert peak <= budget, f"the outbox took {peak} bytes of a {budget}-byte budget"

        async def beat() -> dict[str, Any] | None:
            for event in reversed(events):
                if event["type"].endswith("host_heartbeat"):
                    section: dict[str, Any] = event["data"]["lattice_edge"]["forward"]
                    return section if section["dropped"] == report["dropped"] else None
            return None

        assert (await eventually(beat, 10, "a heartbeat with the count"))["state"] == "paused"
        drops = [e["data"] for e in events if e["type"].endswith("forward_dropped")]
        assert drops and sum(d["dropped"] for d in drops) == report["dropped"]
        assert drops[-1]["dropped_total"] == report["dropped"]
        assert drops[-1]["reason"] == "budget"

        hub.start()
        await wait_hub_count(hub, held, 30)
        arrived = [index_of(m.data) for m in await hub_messages(hub)]
        assert arrived == list(range(total - held, total))  # the newest, in order, once
        assert outbox_disk_bytes(config.host.data_dir) <= budget
        dropped = report["dropped"]
        await eventually(lambda: _is(host.health()["forward"]["waiting_messages"], 0), 10, "")

    state = json.loads((config.host.data_dir / FORWARD_STATE_FILE).read_text())
    assert state["dropped"] == dropped
    async with run_host(config) as again:  # the count survives a restart
        assert again.health()["forward"]["dropped"] == dropped


async def _is(value: Any, expected: Any) -> bool:
    return bool(value == expected)


async def test_messages_older_than_the_age_budget_are_dropped(tmp_path: Path, hub: Hub) -> None:
    await create_uplink(hub)
    config = config_for(tmp_path, hub, budgets="store_forward_max_age_h = 0.0006")  # ~2.2 s
    async with run_host(config) as host:
        hub.stop()
        await eventually(lambda: _is(host.uplink.connected, False), 10, "the uplink to drop")
        anon = await connect_device(host.client_url)
        for index in range(10):
            await anon.publish("sensors.old", payload(index))
        await anon.flush()
        await asyncio.sleep(3.5)
        for index in range(10, 15):
            await anon.publish("sensors.new", payload(index))
        await anon.flush()
        await anon.close()
        await eventually(lambda: _is(host.health()["forward"]["dropped"], 10), 10, "10 dropped")
        hub.start()
        await wait_hub_count(hub, 5, 30)
        assert [index_of(m.data) for m in await hub_messages(hub)] == list(range(10, 15))


async def test_a_message_the_hub_refuses_for_good_is_skipped_and_counted(
    tmp_path: Path, hub: Hub
) -> None:
    events: list[dict[str, Any]] = []
    cloud = await connect_hub(hub)
    await cloud.jetstream().add_stream(
        name="LATTICE_EDGE_UPLINK", subjects=["lattice-edge.uplink.>"], max_msg_size=400
    )
    await cloud.close()
    async with run_host(config_for(tmp_path, hub)) as host:
        await watch_events(host, events)
        anon = await connect_device(host.client_url)
        await anon.publish("sensors.a", payload(0))
        await anon.publish("sensors.big", payload(1, size=2000))
        await anon.publish("sensors.b", payload(2))
        await anon.flush()
        await wait_hub_count(hub, 2, 30)
        assert [index_of(m.data) for m in await hub_messages(hub)] == [0, 2]
        report = await eventually(
            lambda: _report_if(host, lambda r: r["refused"] == 1 and r["waiting_messages"] == 0),
            10, "the refusal to be counted",
        )  # fmt: skip
        assert report["dropped"] == 0 and report["forwarded"] == 2
        refused = [e["data"] for e in events if e["type"].endswith("forward_dropped")]
        assert refused and refused[0]["reason"] == "refused" and refused[0]["seq"] == 2
        await anon.close()


async def _report_if(host: Host, check: Any) -> dict[str, Any] | None:
    report: dict[str, Any] = host.health()["forward"]
    return report if check(report) else None


async def test_without_a_hub_stream_it_waits_says_why_and_resumes_after_uplink_init(
    tmp_path: Path, hub: Hub
) -> None:
    config = config_for(tmp_path, hub)
    async with run_host(config) as host:
        await eventually(lambda: _is(host.uplink.connected, True), 10, "the uplink")
        anon = await connect_device(host.client_url)
        for index in range(3):
            await anon.publish("sensors.early", payload(index))
        await anon.flush()
        report = await eventually(
            lambda: _report_if(host, lambda r: "uplink init" in (r["reason"] or "")),
            10, "the reason",
        )  # fmt: skip
        assert report["state"] == "paused"
        assert "lattice-edge.uplink." in report["reason"]

        status = await asyncio.to_thread(
            run_cli, "status", "--config", str(config.source), "--json"
        )
        shown = json.loads(status.stdout)["forward"]
        assert shown["waiting_messages"] == 3 and shown["state"] == "paused"
        text = await asyncio.to_thread(run_cli, "status", "--config", str(config.source))
        assert "outbox   : 3 waiting" in text.stdout and "uplink init" in text.stdout

        init = await asyncio.to_thread(
            run_cli,
            "fleet",
            "uplink",
            "init",
            "--hub",
            hub.client_url,
            "--creds",
            str(hub.client_creds),
        )
        assert init.returncode == 0, init.stderr
        assert "LATTICE_EDGE_UPLINK captures lattice-edge.uplink.>" in init.stdout
        await wait_hub_count(hub, 3, 40)
        assert [index_of(m.data) for m in await hub_messages(hub)] == [0, 1, 2]
        await anon.close()


async def test_forwarding_through_a_2_9_leaf(
    tmp_path: Path,
    hub: Hub,
    old_nats_server: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    """Debian bookworm's nats-server 2.9.10 (the only armhf build) as the device's leaf:
    its JetStream API and v1 ack subjects carry the same guarantees."""
    await create_uplink(hub)
    config = config_for(tmp_path, hub, leaf=f"nats_server = '{old_nats_server}'")
    async with run_host(config) as host:
        assert host.server.version[:2] == (2, 9)
        anon = await connect_device(host.client_url)
        for index in range(50):
            await anon.publish("sensors.old", payload(index))
        await anon.flush()
        await wait_hub_count(hub, 50, 20)
        hub.stop()
        for index in range(50, 100):
            await anon.publish("sensors.old", payload(index))
        await anon.flush()
        hub.start()
        await wait_hub_count(hub, 100, 30)
        messages = await hub_messages(hub)
        assert [index_of(m.data) for m in messages] == list(range(100))
        assert host.health()["forward"]["dropped"] == 0
        await anon.close()


async def test_a_device_allowed_only_its_own_uplink_subjects_forwards(
    tmp_path: Path, hub: Hub
) -> None:
    """What a fleet's device role must allow, and no more: publishing under
    ``lattice-edge.uplink.{host}.>`` and receiving its PubAcks on ``_INBOX_LE.{host}.>``."""
    await create_uplink(hub)
    host_id = ensure_host_keys(tmp_path / "device" / "data" / "keys")[0].host_id
    creds = hub.issue_creds(
        "device-role",
        publish=[f"lattice-edge.uplink.{host_id}.>"],
        subscribe=[f"_INBOX_LE.{host_id}.>"],
    )
    path = device_config(tmp_path / "device", upstream_url=hub.leaf_url, creds=creds)
    async with run_host(load_config(path, env={})) as host:
        assert host.keys.host_id == host_id
        anon = await connect_device(host.client_url)
        for index in range(20):
            await anon.publish("sensors.confined", payload(index))
        await anon.flush()
        await wait_hub_count(hub, 20, 20)
        assert [index_of(m.data) for m in await hub_messages(hub)] == list(range(20))
        # the PubAcks came back: the outbox is empty, not merely copied
        await eventually(
            lambda: _report_if(host, lambda r: r["forwarded"] == 20 and r["waiting_messages"] == 0),
            10, "the outbox to drain", lambda: host.health()["forward"],
        )  # fmt: skip
        await anon.close()
