"""Hardening regressions, in-process: one test per finding of the attack on the host.

Each runs a real host (real nats-server leaf, real wasm3 sandbox) in this process through
:func:`agent.host.run_host`, so error paths are exercised in well under a second each.
Disk faults are injected by making the state writer raise ``ENOSPC``; everything else is
the real thing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from lattice_testing import agent_seed, free_port, run_cli

import agent.state
from agent.config import Config, load_config
from agent.errors import AgentRunningError
from agent.host import Host
from agent.identity.keys import KeyKind, KeyPair, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient, connect
from agent.lattice.invocation import InvocationResponse, WasmCloudEntity, new_invocation
from agent.launch import prepare_host, run_host
from agent.logs import EscapingFormatter

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"
CTL = "wasmbus.ctl.default"


class Lab:
    """A running host, its config, a trusted signer and an agent-user lattice client."""

    def __init__(self, host: Host, client: LatticeClient, issuer: KeyPair, root: Path) -> None:
        self.host = host
        self.client = client
        self.issuer = issuer
        self.root = root
        self.host_id = host.keys.host_id

    @property
    def data(self) -> Path:
        return self.host.config.host.data_dir

    def module(self, name: str = "echo", module_key: KeyPair | None = None) -> str:
        """Sign the echo guest; put it in the file root; return its reference."""
        signed, _ = sign_module(ECHO.read_bytes(), self.issuer, name, module_key=module_key)
        path = self.data / "actors" / f"{name}.wasm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(signed)
        return f"file://{path}"

    async def command(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = await self.client.request(f"{CTL}.cmd.{self.host_id}.{op}", body)
        return reply

    async def alive(self) -> None:
        hosts = await self.client.ping(wait=0.5)
        assert [h["id"] for h in hosts] == [self.host_id]

    async def invoke(self, actor: str, operation: str, body: bytes, **kwargs: Any) -> Any:
        return await self.client.invoke(
            actor, operation, body, cluster_key=self.host.keys.cluster, host_id=self.host_id,
            **kwargs,
        )  # fmt: skip


def write_config(root: Path, issuer: KeyPair, extra: str = "") -> Config:
    path = root / "agent.toml"
    path.write_text(
        f"[host]\ndata_dir = '{root / 'data'}'\nprofile = 'generic-x86_64'\n"
        f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
        f"[trust]\ntrusted_issuers = ['{issuer.public_key}']\n"
        "[budgets]\nheartbeat_interval_s = 0.5\n" + extra
    )
    return load_config(path, env={})


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    issuer = generate(KeyKind.ACCOUNT)
    config = write_config(tmp_path, issuer)
    async with run_host(config) as host:
        seed = agent_seed(config.host.data_dir)
        async with connect(host.client_url, seed=seed) as client:
            yield Lab(host, client, issuer, tmp_path)


async def start(lab: Lab, reference: str, count: int = 1) -> str:
    started = await lab.client.start_actor(lab.host_id, reference, count, timeout=20)
    return str(started["public_key"])


# --- 1: one message or a full disk must not kill the host ------------------------------------


@pytest.mark.parametrize("op", ["la", "upd", "scale", "sa"])
async def test_a_nul_in_a_reference_is_refused_and_the_host_lives(lab: Lab, op: str) -> None:
    ref = "file:///tmp/a\u0000b"
    body = {"actor_ref": ref, "new_actor_ref": ref, "actor_id": "MX", "count": 1}
    reply = await lab.command(op, body)
    assert reply["accepted"] is False
    assert "control characters" in reply["error"] or "not running" in reply["error"]
    await lab.alive()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    full = [False]
    real = agent.state.write_atomic

    def write(path: Path, data: bytes, **kwargs: Any) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kwargs)

    monkeypatch.setattr(agent.state, "write_atomic", write)
    return full


async def test_a_full_disk_refuses_changes_and_loses_nothing(
    lab: Lab, disk_full: list[bool]
) -> None:
    actor = await start(lab, lab.module())
    disk_full[0] = True
    refused = await lab.command("la", {"actor_ref": lab.module("other"), "count": 1})
    assert refused["accepted"] is False and "No space left" in refused["error"]
    scaled = await lab.command("scale", {"actor_id": actor, "actor_ref": actor, "count": 3})
    assert scaled["accepted"] is False
    link = {"actor_id": actor, "contract_id": "wasmcloud:keyvalue", "provider_id": "VPROV"}
    put = await lab.client.request(f"{CTL}.linkdefs.put", link)
    assert put["accepted"] is False and "not changed" in put["error"]
    assert (await lab.client.request(f"{CTL}.get.links"))["links"] == []  # memory == disk
    # Still serving from memory, and saying so.
    assert (await lab.invoke(actor, "Echo", b"still here")).response == b"still here"
    health = await lab.client.request(f"lattice-edge.host.{lab.host_id}.health")
    assert health["state_saved"] is False and "No space" in health["state_error"]
    disk_full[0] = False
    assert (await lab.client.request(f"{CTL}.linkdefs.put", link))["accepted"] is True
    saved = json.loads((lab.data / "state.json").read_text())
    assert saved["links"][0]["provider_id"] == "VPROV" and saved["actors"][0]["actor_id"] == actor
    await lab.alive()


# --- 2, 3: untrusted references ----------------------------------------------------------------


async def test_paths_outside_the_roots_say_nothing_about_the_file(lab: Lab) -> None:
    async with lab.client.events("actor_start_failed") as queue:
        for ref in ("file:///etc/shadow", "file:///etc/no-such-file", "file:///dev/zero"):
            assert (await lab.command("la", {"actor_ref": ref}))["accepted"] is True
            event = await lab.client.wait_for(
                queue, lambda e, r=ref: e["data"]["actor_ref"] == r, 10
            )
            error = event["data"]["error"]
            assert "outside the directories" in error
            assert "72 6f 6f 74" not in error and "No such file" not in error
    await lab.alive()


async def test_a_fifo_in_the_root_does_not_hang_the_host(lab: Lab) -> None:
    fifo = lab.data / "actors" / "pipe.wasm"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    async with lab.client.events("actor_start_failed") as queue:
        assert (await lab.command("la", {"actor_ref": f"file://{fifo}"}))["accepted"]
        event = await lab.client.wait_for(queue, lambda e: True, 10)
    assert "not a regular file" in event["data"]["error"]
    await lab.alive()


# --- 4: local access and replays ---------------------------------------------------------------


async def test_anonymous_local_clients_cannot_steal_forge_or_control(lab: Lab) -> None:
    actor = await start(lab, lab.module())
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    anonymous = await nats.connect(lab.host.client_url, error_cb=on_error)
    try:
        thief = await anonymous.subscribe(f"wasmbus.rpc.default.{actor}", queue="q")
        await anonymous.flush()
        for _ in range(20):
            assert (await lab.invoke(actor, "Echo", b"mine")).response == b"mine"
        with pytest.raises(asyncio.TimeoutError):
            await thief.next_msg(timeout=0.2)  # the server never gave it one
        with pytest.raises(nats.errors.TimeoutError):
            body = json.dumps({"actor_ref": lab.module("x")}).encode()
            await anonymous.request(f"{CTL}.cmd.{lab.host_id}.la", body, timeout=0.5)
        await asyncio.sleep(0.2)
        assert any("permissions violation" in str(e).lower() for e in errors)
        # Application subjects work as before.
        sub = await anonymous.subscribe("app.temperature")
        await anonymous.publish("app.temperature", b"21.5")
        assert (await sub.next_msg(timeout=2)).data == b"21.5"
    finally:
        await anonymous.close()


async def test_a_replayed_invocation_runs_once(lab: Lab) -> None:
    actor = await start(lab, lab.module())
    key = lab.host.keys.cluster
    invocation = new_invocation(
        WasmCloudEntity(key.public_key), WasmCloudEntity(actor), "Echo", b"once",
        cluster_key=key, host_id=lab.host_id,
    )  # fmt: skip
    replies = []
    for _ in range(3):
        reply = await lab.client.nats.request(
            f"wasmbus.rpc.default.{actor}", invocation.encode(), timeout=5
        )
        replies.append(InvocationResponse.decode(bytes(reply.data)))
    assert replies[0].msg == b"once" and replies[0].error is None
    assert all("replay" in (r.error or "") for r in replies[1:])


# --- 6: logs -----------------------------------------------------------------------------------


async def test_rejections_are_escaped_and_rate_limited(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    actor = await start(lab, lab.module())
    stranger = generate(KeyKind.CLUSTER)  # not a cluster issuer of this host
    with caplog.at_level(logging.INFO):
        for index in range(500):
            invocation = new_invocation(
                WasmCloudEntity(stranger.public_key), WasmCloudEntity(actor), "Echo", b"x",
                cluster_key=stranger, host_id=lab.host_id,
                invocation_id=f"id-{index}\n2026-12-01 CRITICAL fake \x1b[31mline",
            )  # fmt: skip
            await lab.client.nats.publish(f"wasmbus.rpc.default.{actor}", invocation.encode())
        await lab.client.nats.flush()
        await asyncio.sleep(0.5)
    rejected = [r for r in caplog.records if "rejected invocation" in r.getMessage()]
    assert 1 <= len(rejected) <= 3  # 500 attempts, a line or two in the log
    line = EscapingFormatter("%(message)s").format(rejected[0])
    assert "\n" not in line and "\x1b" not in line and "\\n2026-12-01 CRITICAL" in line


# --- 7: modes ----------------------------------------------------------------------------------


async def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config = write_config(tmp_path, issuer)
    previous = os.umask(0)
    try:
        async with run_host(config) as host:
            data = host.config.host.data_dir

            def mode(path: Path) -> int:
                return stat.S_IMODE(path.stat().st_mode)

            assert mode(data) == 0o750 and mode(data / "run") == 0o750
            assert mode(data / "keys") == 0o700 and mode(data / "keys" / "host.nk") == 0o600
            assert mode(data / "run" / "nats-server.conf") == 0o600
            assert mode(data / "run" / "agent.json") == 0o640
            assert mode(data / "state.json") == 0o640
            assert not mode(data / "jetstream") & 0o007  # nats-server's own, under our umask
    finally:
        os.umask(previous)


# --- 9, 10: one agent per data dir; damaged state ----------------------------------------------


async def test_a_second_host_on_the_same_data_dir_is_refused(lab: Lab) -> None:
    with pytest.raises(AgentRunningError, match=f"pid {os.getpid()}"):
        prepare_host(lab.host.config)
    await lab.alive()


async def test_damaged_state_is_set_aside_and_failed_restores_are_kept(tmp_path: Path) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config = write_config(tmp_path, issuer)
    data = config.host.data_dir
    data.mkdir(parents=True)
    (data / "state.json").write_bytes(b"\xff\xfe\x00 not a state file")
    async with run_host(config):
        pass
    assert len(list(data.glob("state.json.corrupt-*"))) == 1
    missing = {
        "actor_id": "MMISSING", "actor_ref": f"file://{data}/actors/gone.wasm",
        "module_sha256": "", "count": 2,
    }  # fmt: skip
    (data / "state.json").write_text(json.dumps({"version": 1, "actors": [missing]}))
    async with run_host(config) as host:
        health = host.health()
        (failed,) = health["restore_failed"]
        assert failed["actor_id"] == "MMISSING" and "cannot read" in failed["error"]
    (kept,) = json.loads((data / "state.json").read_text())["actors"]
    assert kept["actor_id"] == "MMISSING" and kept["count"] == 2 and "cannot read" in kept["error"]


# --- 12: protocol ------------------------------------------------------------------------------


async def test_sa_stops_an_actor(lab: Lab) -> None:
    actor = await start(lab, lab.module(), count=2)
    async with lab.client.events("actor_stopped") as queue:
        reply = await lab.command("sa", {"actor_ref": actor, "count": 1})
        assert reply["accepted"] is True
        await lab.client.wait_for(queue, lambda e: e["data"]["public_key"] == actor, 10)
    inventory = await lab.client.inventory(lab.host_id)
    assert [len(a["instances"]) for a in inventory["actors"]] == [1]


async def test_stop_naming_another_host_is_refused(lab: Lab) -> None:
    other = generate(KeyKind.SERVER).public_key
    reply = await lab.command("stop", {"host_id": other})
    assert reply["accepted"] is False and other in reply["error"]
    await asyncio.sleep(0.3)
    await lab.alive()


async def test_scale_with_annotations_touches_only_those_instances(lab: Lab) -> None:
    ref = lab.module()
    actor = await start(lab, ref, count=2)
    async with lab.client.events("actor_started") as queue:
        body = {"actor_ref": ref, "count": 1, "annotations": {"team": "a"}}
        assert (await lab.command("la", body))["accepted"]
        await lab.client.wait_for(queue, lambda e: e["data"]["annotations"] == {"team": "a"}, 10)
    async with lab.client.events("actor_stopped") as queue:
        body = {"actor_id": actor, "actor_ref": ref, "count": 0, "annotations": {"team": "a"}}
        assert (await lab.command("scale", body))["accepted"]
        await lab.client.wait_for(queue, lambda e: e["data"]["public_key"] == actor, 10)
    await asyncio.sleep(0.2)
    (entry,) = (await lab.client.inventory(lab.host_id))["actors"]
    assert [i["annotations"] for i in entry["instances"]] == [{}, {}]


@pytest.mark.parametrize("provider", ["VPROV\r\nINJECT", "VPROV.*", "VPROV >", "V>"])
async def test_link_ids_that_could_never_be_called_are_refused(lab: Lab, provider: str) -> None:
    link = {"actor_id": "MA", "contract_id": "wasmcloud:keyvalue", "provider_id": provider}
    reply = await lab.client.request(f"{CTL}.linkdefs.put", link)
    assert reply["accepted"] is False and "provider_id" in reply["error"]
    assert (await lab.client.request(f"{CTL}.get.links"))["links"] == []


# --- 11: quarantine is reported and recoverable -----------------------------------------------


async def test_a_quarantined_instance_is_in_the_inventory_and_scale_releases_it(
    tmp_path: Path,
) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config = write_config(tmp_path, issuer, "invocation_deadline_s = 0.3\n")
    loop = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "loop.wasm"
    signed, _ = sign_module(loop.read_bytes(), issuer, "spinner")
    module = config.host.data_dir / "actors" / "loop.wasm"
    module.parent.mkdir(parents=True)
    module.write_bytes(signed)
    async with (
        run_host(config) as host,
        connect(host.client_url, seed=agent_seed(config.host.data_dir)) as client,
    ):
        lab = Lab(host, client, issuer, tmp_path)
        async with client.events("actor_quarantined") as queue:
            actor = await start(lab, f"file://{module}")
            for _ in range(3):
                with pytest.raises(Exception, match="deadline"):
                    await lab.invoke(actor, "spin", b"", timeout=5)
            event = await client.wait_for(queue, lambda e: e["data"]["public_key"] == actor, 10)
        assert "deadline" in event["data"]["reason"]
        (instance,) = (await client.inventory(lab.host_id))["actors"][0]["instances"]
        assert "deadline" in instance["quarantined"]["reason"] and instance["quarantined"]["until"]
        assert (await lab.command("scale", {"actor_id": actor, "actor_ref": actor, "count": 1}))[
            "accepted"
        ]
        await asyncio.sleep(0.5)
        (instance,) = (await client.inventory(lab.host_id))["actors"][0]["instances"]
        assert "quarantined" not in instance


def test_a_second_run_fails_with_one_line_naming_the_running_agent(tmp_path: Path) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config = write_config(tmp_path, issuer)

    async def main() -> None:
        async with run_host(config):
            second = await asyncio.to_thread(
                run_cli, "run", "--config", str(tmp_path / "agent.toml"), timeout=60
            )
            assert second.returncode == 1
            assert second.stderr.strip().splitlines() == [
                f"lattice-edge: error: another lattice-edge agent (pid {os.getpid()}) is "
                f"already running on {config.host.data_dir}"
            ]
            assert (config.run_dir / "agent.json").exists()  # the live host's file is untouched

    asyncio.run(main())
