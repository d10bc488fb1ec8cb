"""Fleet rollout end to end, with real processes: a hub, ``fleet serve``, enrolled device
agents with labels, ``fleet deploy`` / ``status`` / ``undeploy``, a device whose link is down
during the deploy, a late device, an update, and ``serve`` killed with -9 mid-rollout."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from fleet_testing import (
    Fleet,
    FleetHub,
    ServeProcess,
    connected,
    enroll,
    fleet_cli,
    free_port_url,
    init_device,
    ok,
    one_error_line,
    seen_hosts,
)
from lattice_testing import AgentProcess, agent_seed, wait_until

from agent.fleet.registrar import FAILPOINT_ENV
from agent.identity.keys import KeyKind, KeyPair, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "fixtures" / "guests" / "echo.wasm"
FAST = {"heartbeat_interval_s": 2.0}


def signed_echo(path: Path, issuer: KeyPair, subject: KeyPair, version: str) -> Path:
    module, _ = sign_module(ECHO.read_bytes(), issuer, "greet", ver=version, module_key=subject)
    path.write_bytes(module)
    return path


def status(fleet: Fleet, name: str) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(
        ok(fleet_cli("status", name, "--json", fleet_dir=fleet.path))
    )
    return reply


def states(fleet: Fleet, name: str) -> dict[str, tuple[str, str | None, int]]:
    """host -> (state, sha256, instances) from ``fleet status``."""
    return {
        h["host_id"]: (h["state"], h["sha256"], h["instances"])
        for h in status(fleet, name)["hosts"]
    }


def wait_states(
    fleet: Fleet, name: str, expected: dict[str, tuple[str, str | None, int]], timeout: float = 60
) -> None:
    def matches() -> bool:
        current = states(fleet, name)
        return all(current.get(host) == want for host, want in expected.items())

    try:
        wait_until(matches, timeout, f"{name} to reach {expected}", step=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {states(fleet, name)}") from None


async def inventory_counts(device: Device) -> dict[str, int]:
    async with connected(device.url, nkeys_seed_str=agent_seed(device.data)) as client:
        subject = f"wasmbus.ctl.default.get.{device.host_id}.inv"
        reply = await client.request(subject, b"", timeout=5)
    return {a["id"]: len(a["instances"]) for a in json.loads(reply.data)["actors"]}


async def invoke_on(device: Device, actor_id: str, cluster: KeyPair) -> bytes:
    """Invoke through the device's own leaf: NATS serves a queue group locally first."""
    async with connected(device.url, nkeys_seed_str=agent_seed(device.data)) as client:
        reply = await LatticeClient(client, "default").invoke(
            actor_id, "Echo", b"hello fleet", cluster_key=cluster,
            host_id=generate(KeyKind.SERVER).public_key,
        )  # fmt: skip
    return reply.response


class Device:
    def __init__(
        self, fleet: Fleet, root: Path, name: str, labels: str, factory: type[AgentProcess]
    ) -> None:
        self.config, data, self.host_id, ports = init_device(root, name, budgets=FAST)
        self.url = f"nats://127.0.0.1:{ports['client']}"
        ok(enroll(fleet, self.config, fleet.token(labels)))
        self.factory, self.data = factory, data
        self.agent = factory(self.config, data).start()
        self.agent.wait_ready()

    def restart_offline(self) -> str:
        """Stop the agent, cut its link, start it again: it comes back on its own cache."""
        assert self.agent.terminate() == 0
        enrolled = self.config.read_text()
        start = enrolled.index('urls = ["') + len('urls = ["')
        end = enrolled.index('"', start)
        self.config.write_text(enrolled[:start] + free_port_url() + enrolled[end:])
        self.agent = self.factory(self.config, self.data).start()
        self.agent.wait_ready()
        return enrolled

    def cut_link(self) -> str:
        """Point the upstream at a closed port and SIGHUP: the leaf link is down."""
        enrolled = self.config.read_text()
        start = enrolled.index('urls = ["') + len('urls = ["')
        end = enrolled.index('"', start)
        self.config.write_text(enrolled[:start] + free_port_url() + enrolled[end:])
        self._hup()
        return enrolled

    def restore_link(self, enrolled: str) -> None:
        self.config.write_text(enrolled)
        self._hup()

    def distrust(self) -> None:
        """Drop the fleet's actor issuers from this device's config (an operator's slip)."""
        text = self.config.read_text()
        start = text.index("trusted_issuers = [")
        end = text.index("]", start) + 1
        self.config.write_text(text[:start] + "trusted_issuers = []" + text[end:])
        self._hup()

    def _hup(self) -> None:
        assert self.agent.process is not None
        self.agent.process.send_signal(signal.SIGHUP)


async def test_deploy_reaches_matching_hosts_late_and_offline_ones_converge_and_updates_roll(
    tmp_path: Path,
    fleet_hub: FleetHub,
    serves: list[ServeProcess],
    agent_factory: type[AgentProcess],
) -> None:
    issuer, stranger, cluster = (
        generate(KeyKind.ACCOUNT), generate(KeyKind.ACCOUNT), generate(KeyKind.CLUSTER)
    )  # fmt: skip
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet", "--trust-issuer", issuer.public_key,
                               "--cluster-issuer", cluster.public_key)  # fmt: skip
    with (fleet.path / "fleet.toml").open("a") as toml:
        toml.write('\n[rollout]\nlease = "5s"\n')
    serves.append(ServeProcess(fleet.path).start())
    subject = generate(KeyKind.MODULE)
    v1 = signed_echo(tmp_path / "greet-v1.wasm", issuer, subject, "0.1.0")
    v2 = signed_echo(tmp_path / "greet-v2.wasm", issuer, subject, "0.2.0")
    rogue = signed_echo(tmp_path / "rogue.wasm", stranger, subject, "6.6.6")

    a1 = Device(fleet, tmp_path, "a1", "site=a", agent_factory)
    a2 = Device(fleet, tmp_path, "a2", "site=a", agent_factory)
    b1 = Device(fleet, tmp_path, "b1", "site=b", agent_factory)
    wait_until(lambda: len(fleet.devices()) == 3, 10, "three enrolled devices")
    # The reconciler must have seen a2 before its link goes down.
    for _ in range(60):
        if a2.host_id in await seen_hosts(fleet):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the fleet never saw a2")
    enrolled = a2.cut_link()

    refused = one_error_line(fleet_cli("deploy", "greet", str(rogue), "--selector", "site=a",
                                       fleet_dir=fleet.path))  # fmt: skip
    assert "devices would refuse this module" in refused, refused
    assert f"issuer {stranger.public_key} is not in trusted_issuers" in refused
    deployed = json.loads(ok(fleet_cli("deploy", "greet", str(v1), "--selector", "site=a", "--json",
                                       fleet_dir=fleet.path)))  # fmt: skip
    record = deployed["deployment"]
    sha1, actor = record["sha256"], record["actor_id"]
    assert actor == subject.public_key and record["version"] == 1
    wait_states(fleet, "greet", {a1.host_id: ("running", sha1, 1)})
    now = states(fleet, "greet")
    assert b1.host_id not in now
    assert now[a2.host_id][0] == "pending"  # its link is down
    assert await invoke_on(a1, actor, cluster) == b"hello fleet"
    assert await inventory_counts(b1) == {}

    a2.restore_link(enrolled)
    wait_states(
        fleet, "greet", {a1.host_id: ("running", sha1, 1), a2.host_id: ("running", sha1, 1)}
    )
    assert await invoke_on(a2, actor, cluster) == b"hello fleet"

    a3 = Device(fleet, tmp_path, "a3", "site=a", agent_factory)  # no command for it
    wait_states(fleet, "greet", {a3.host_id: ("running", sha1, 1)})
    # Enrolled but never started: reported as such.
    config_a4, _, host_a4, _ = init_device(tmp_path, "a4", budgets=FAST)
    ok(enroll(fleet, config_a4, fleet.token("site=a")))
    assert states(fleet, "greet")[host_a4] == ("never-seen", None, 0)

    # A host that refuses the module is reported failed with its own error text, and retried.
    b1.distrust()
    ok(fleet_cli("deploy", "solo", str(v1), "--selector", "site=b", fleet_dir=fleet.path))

    def failed() -> dict[str, Any] | None:
        rows = [h for h in status(fleet, "solo")["hosts"] if h["host_id"] == b1.host_id]
        return rows[0] if rows and rows[0]["state"] == "failed" else None

    row = wait_until(failed, 30, "solo to fail on b1", step=0.5)
    assert "not in trusted_issuers" in row["error"], row
    undone = json.loads(ok(fleet_cli("undeploy", "solo", "--json", fleet_dir=fleet.path)))
    assert undone["changed"] is True and undone["deployment"]["state"] == "deleted"

    # A new version rolls out one host at a time; serve is killed with -9 half-way, holding
    # the update slot and a host's lease.
    serves[0].stop()
    crashing = ServeProcess(fleet.path, env={FAILPOINT_ENV: "before-update"}).start()
    serves.append(crashing)
    update = json.loads(ok(fleet_cli("deploy", "greet", str(v2), "--selector", "site=a", "--json",
                                     fleet_dir=fleet.path)))  # fmt: skip
    sha2 = update["deployment"]["sha256"]
    assert update["deployment"]["version"] == 2 and sha2 != sha1
    wait_until(lambda: "failpoint before-update reached" in crashing.log(), 30, "the failpoint")
    midway = states(fleet, "greet")
    running = [midway[d.host_id] for d in (a1, a2, a3)]
    assert [s[0] for s in running].count("updating") == 1, midway
    assert all(s[1] == sha1 for s in running), midway  # nobody updated yet
    crashing.kill9()
    serves.append(ServeProcess(fleet.path).start())  # two at once from here on
    serves.append(ServeProcess(fleet.path).start())
    site_a = [a1, a2, a3]
    wait_states(fleet, "greet", {d.host_id: ("running", sha2, 1) for d in site_a}, timeout=90)
    for device in site_a:
        assert await inventory_counts(device) == {actor: 1}
        assert await invoke_on(device, actor, cluster) == b"hello fleet"
    assert await inventory_counts(b1) == {}
    # A device restarted without its link runs the actor from its module cache.
    enrolled = a1.restart_offline()
    assert await inventory_counts(a1) == {actor: 1}
    assert await invoke_on(a1, actor, cluster) == b"hello fleet"
    a1.restore_link(enrolled)
    listed = json.loads(ok(fleet_cli("deployments", "--json", fleet_dir=fleet.path)))
    assert [(d["name"], d["version"], d["state"]) for d in listed["deployments"]] == [
        ("greet", 2, "active"),
        ("solo", 2, "deleted"),
    ]

    ok(fleet_cli("undeploy", "greet", fleet_dir=fleet.path))

    async def stopped_everywhere() -> bool:
        counts = [await inventory_counts(d) for d in site_a]
        return all(c == {} for c in counts)

    deadline = asyncio.get_running_loop().time() + 60
    while not await stopped_everywhere():
        assert asyncio.get_running_loop().time() < deadline, "greet still runs somewhere"
        await asyncio.sleep(0.5)
    wait_until(lambda: status(fleet, "greet")["hosts"] == [], 30, "an empty status", step=0.5)
    for device in (*site_a, b1):
        assert device.agent.terminate() == 0
