"""Fleet enrollment end to end, with real processes: an operator-mode hub whose account JWT
carries the keys ``fleet init`` made, ``fleet serve``, devices enrolled with ``lattice-edge
enroll`` and running ``lattice-edge run``, and the real nats-server enforcing each role."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest
from cli_testing import assert_documented_keys
from fleet_testing import (
    Fleet,
    FleetHub,
    ServeProcess,
    connected,
    connection_refused,
    enroll,
    enroll_by_hand,
    fleet_cli,
    init_device,
    nats_server_29,
    ok,
    one_error_line,
    serve,
    wait_for_hosts,
)
from lattice_testing import AgentProcess, agent_seed, run_cli, wait_until

from agent.identity import jwt
from agent.identity.keys import KeyKind, generate

pytestmark = pytest.mark.integration


async def refused(client: nats.NATS, action: str, subject: str) -> bool:
    """Publish or subscribe; True when the server answers with a permissions violation."""
    before = len(client.errors)
    if action == "sub":
        await client.subscribe(subject)
    else:
        await client.publish(subject, b"{}")
    await client.flush()
    for _ in range(20):
        if any("permissions violation" in e.lower() for e in client.errors[before:]):
            return True
        await asyncio.sleep(0.05)
    return False


def account_keys(hub: FleetHub) -> list[dict[str, object]]:
    token = hub.account_jwt.read_text().strip()
    entries: list[dict[str, object]] = jwt.decode(token).claims["nats"]["signing_keys"]
    return entries


async def test_two_devices_enroll_join_the_hub_and_stay_in_their_lanes(
    tmp_path: Path,
    fleet_hub: FleetHub,
    serves: list[ServeProcess],
    agent_factory: type[AgentProcess],
) -> None:
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet")
    # The account JWT on the hub carries exactly the entries 'fleet init' printed.
    assert fleet.init["account"] == fleet_hub.app.public_key
    assert account_keys(fleet_hub) == fleet.init["signing_keys"]
    assert [k["role"] for k in fleet.init["signing_keys"]] == [
        "lattice-edge-device", "lattice-edge-bootstrap",
    ]  # fmt: skip
    serve(fleet, serves)
    token_a, token_b = fleet.token("site=a", "tier=edge"), fleet.token("site=b")

    # Device A runs standalone first and is enrolled while its agent runs (SIGHUP path).
    config_a, data_a, host_a, ports_a = init_device(tmp_path, "dev-a")
    agent_a = agent_factory(config_a, data_a).start()
    agent_a.wait_ready()
    async with connected(fleet_hub.client_url, fleet_hub.client_creds) as cloud:
        beats = await cloud.subscribe("wasmbus.evt.default.host_heartbeat")
        await cloud.flush()
        result = enroll(fleet, config_a, token_a)
        assert result.stdout.strip() == host_a, result.stderr
        assert "asked to reconnect its leaf" in result.stderr
        # A announces itself as soon as its new link is up, well before its 30 s heartbeat.
        beat = json.loads((await beats.next_msg(timeout=15)).data)
        assert beat["source"] == host_a and beat["data"]["labels"]["site"] == "a"
    # Device B is enrolled first, then started.
    config_b, data_b, host_b, _ = init_device(tmp_path, "dev-b")
    enrolled = json.loads(ok(enroll(fleet, config_b, token_b, "--json")))
    assert enrolled["host_id"] == host_b and enrolled["fleet"] == fleet.fleet_id
    assert enrolled["labels"] == {"site": "b"} and enrolled["agent_pid"] is None
    assert enrolled["config"] == str(config_b) and enrolled["leaf_urls"] == [fleet_hub.leaf_url]
    agent_b = agent_factory(config_b, data_b).start()
    agent_b.wait_ready()

    creds_a = data_a / "keys" / "upstream.creds"
    assert (creds_a.stat().st_mode & 0o777) == 0o600
    assert jwt.decode(jwt.read_creds(creds_a).jwt).claims["name"] == host_a
    hosts = await wait_for_hosts(fleet_hub.client_url, fleet_hub.client_creds, {host_a, host_b})
    assert hosts[host_a]["labels"]["site"] == "a" and hosts[host_a]["labels"]["tier"] == "edge"
    assert hosts[host_b]["labels"]["site"] == "b"
    devices = {d["host_key"]: d for d in fleet.devices()}
    assert set(devices) == {host_a, host_b}
    assert devices[host_a]["labels"]["site"] == "a" and not devices[host_a]["revoked"]

    # With A's own credentials, the hub confines it to its own subjects.
    kv = f"KV_LEFLEET_{fleet.fleet_id}"
    async with connected(fleet_hub.client_url, creds_a,
                         inbox_prefix=f"_INBOX_LE.{host_a}") as device:  # fmt: skip
        assert await refused(device, "sub", f"wasmbus.ctl.default.cmd.{host_b}.>")
        assert await refused(device, "sub", f"wasmbus.ctl.default.get.{host_b}.inv")
        assert await refused(device, "pub", f"lattice-edge.fleet.{fleet.fleet_id}.admin.devices")
        assert await refused(device, "sub", f"lattice-edge.fleet.{fleet.fleet_id}.enroll.>")
        assert await refused(device, "sub", "_INBOX.>")
        assert await refused(device, "pub", f"$JS.API.STREAM.INFO.{kv}")
        assert await refused(device, "pub", f"$JS.hub.API.STREAM.INFO.{kv}")
        assert await refused(device, "pub", f"$KV.LEFLEET_{fleet.fleet_id}.token.x")
        assert await refused(device, "sub", f"$KV.LEFLEET_{fleet.fleet_id}.>")
        assert await refused(device, "pub", "$JS.API.STREAM.CREATE.MINE")
        assert await refused(
            device, "pub", f"$JS.hub.API.STREAM.DELETE.OBJ_LEFLEET_{fleet.fleet_id}_ACTORS"
        )
        # ... but may use its own control subjects.
        assert not await refused(device, "sub", f"wasmbus.ctl.default.cmd.{host_a}.la")

    # The fleet's actor store is readable: from the hub with A's creds, and through A's leaf.
    async with connected(fleet_hub.client_url, fleet_hub.client_creds) as owner:
        store = await owner.jetstream().create_object_store(f"LEFLEET_{fleet.fleet_id}_ACTORS")
        await store.put("probe", b"module bytes" * 1000)
    async with connected(
        fleet_hub.client_url, creds_a, inbox_prefix=f"_INBOX_LE.{host_a}"
    ) as device:
        actors = await device.jetstream(domain="hub").object_store(
            f"LEFLEET_{fleet.fleet_id}_ACTORS"
        )
        assert (await actors.get("probe")).data == b"module bytes" * 1000
    async with connected(f"nats://127.0.0.1:{ports_a['client']}", nkeys_seed_str=agent_seed(data_a),
                         inbox_prefix=f"_INBOX_LE.{host_a}") as local:  # fmt: skip
        actors = await local.jetstream(domain="hub").object_store(
            f"LEFLEET_{fleet.fleet_id}_ACTORS"
        )
        assert (await actors.get("probe")).data == b"module bytes" * 1000
        # A's leaf passes nothing else of the hub's JetStream: the fleet KV is out of reach.
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await local.request(f"$JS.hub.API.STREAM.INFO.{kv}", b"", timeout=2)
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await local.request("$JS.hub.API.STREAM.LIST", b"", timeout=2)
    assert fleet_hub.leaf_connections() == 2  # the refused traffic cost no leaf link

    # The bootstrap credential can ask for a nonce and nothing else.
    boot_name = jwt.decode(jwt.read_creds(fleet.bootstrap).jwt).claims["name"]
    async with connected(fleet_hub.client_url, fleet.bootstrap,
                         inbox_prefix=f"_INBOX_LE.{boot_name}") as boot:  # fmt: skip
        reply = await boot.request(
            f"lattice-edge.fleet.{fleet.fleet_id}.enroll.challenge", b'{"token_id":"AAAAAAAAAA"}'
        )
        assert "nonce" in json.loads(reply.data)
        assert await refused(boot, "pub", "wasmbus.evt.default")
        assert await refused(boot, "pub", f"wasmbus.ctl.default.cmd.{host_a}.la")
        assert await refused(boot, "sub", "wasmbus.ctl.default.>")
        assert await refused(boot, "sub", "_INBOX.>")
        assert await refused(boot, "pub", f"lattice-edge.fleet.{fleet.fleet_id}.admin.token.create")
        assert await refused(boot, "pub", "$JS.API.INFO")
        assert await refused(
            boot, "pub", f"lattice-edge.fleet.{fleet.fleet_id}.device.{host_a}.renew"
        )

    status = json.loads(run_cli("status", "--config", str(config_a), "--json").stdout)
    assert status["credentials"]["status"] == "active"
    assert status["upstream"]["connected"] is True
    assert agent_a.terminate() == 0 and agent_b.terminate() == 0


async def test_replayed_expired_forged_and_foreign_tokens_each_get_one_clear_error(
    tmp_path: Path, fleet_hub: FleetHub, serves: list[ServeProcess]
) -> None:
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet")
    other = await Fleet.create(fleet_hub, tmp_path / "other")
    serve(fleet, serves)
    serve(other, serves)

    config, data, host_c, _ = init_device(tmp_path, "dev-c")
    token = fleet.token("site=c")
    ok(enroll(fleet, config, token))
    creds = (data / "keys" / "upstream.creds").read_bytes()
    config_text = config.read_text()
    # The same token again: refused, and nothing on the device changes.
    line = one_error_line(enroll(fleet, config, token))
    assert "already used" in line and "create a new token" in line
    assert (data / "keys" / "upstream.creds").read_bytes() == creds
    assert config.read_text() == config_text
    # A new token re-enrolls it: explicit, logged, and its old user key is superseded.
    ok(enroll(fleet, config, fleet.token("site=c2")))
    [device] = [d for d in fleet.devices() if d["host_key"] == host_c]
    assert device["labels"]["site"] == "c2" and len(device["previous_user_keys"]) == 1
    assert f"host {host_c} re-enrolled" in serves[0].log()

    config_d, data_d, _, _ = init_device(tmp_path, "dev-d")
    before = config_d.read_text()
    expiring = fleet.token(expires="1s")
    await asyncio.sleep(2.2)
    assert "has expired" in one_error_line(enroll(fleet, config_d, expiring))
    foreign = other.token()
    assert "is for fleet" in one_error_line(enroll(fleet, config_d, foreign))
    assert "malformed" in one_error_line(enroll(fleet, config_d, "LE1.nonsense"))
    created = json.loads(ok(fleet_cli("token", "create", "--count", "2", "--json",
                                      fleet_dir=fleet.path)))  # fmt: skip
    withdrawn, _spare = (item["token"] for item in created["tokens"])
    token_id = withdrawn.split(".")[2]
    revoked = json.loads(ok(fleet_cli("token", "revoke", token_id, "--json",
                                      fleet_dir=fleet.path)))  # fmt: skip
    assert revoked["token"]["id"] == token_id and revoked["token"]["state"] == "revoked"
    assert "secret_sha256" not in revoked["token"]
    assert "was revoked" in one_error_line(enroll(fleet, config_d, withdrawn))
    assert not (data_d / "keys" / "upstream.creds").exists()
    assert config_d.read_text() == before

    # Spoken directly: a forged proof of possession, and another fleet's token.
    fresh = fleet.token()
    forged = await enroll_by_hand(fleet, fresh, sign_user=generate(KeyKind.USER))
    assert forged["code"] == 403 and "user key" in str(forged["error"])
    forged = await enroll_by_hand(fleet, fresh, sign_host=generate(KeyKind.SERVER))
    assert forged["code"] == 403 and "host key" in str(forged["error"])
    wrong = await enroll_by_hand(fleet, other.token())
    assert wrong["reason"] == "wrong-fleet" and other.fleet_id in str(wrong["error"])
    # The forged attempts spent nothing: the token still enrolls a real device.
    assert "user_jwt" in await enroll_by_hand(fleet, fresh)
    states = {t["id"]: t["state"] for t in fleet.tokens()}
    assert states[fresh.split(".")[2]] == "spent"
    # A spent token cannot be revoked; the refusal speaks of our commands, not of the
    # admin request's wire name.
    line = one_error_line(fleet_cli("token", "revoke", fresh.split(".")[2], fleet_dir=fleet.path))
    assert "already used" in line and "token.revoke" not in line, line
    assert states[expiring.split(".")[2]] == "unused"


async def test_devices_renew_at_half_life_and_a_revoked_one_is_refused(
    tmp_path: Path,
    fleet_hub: FleetHub,
    serves: list[ServeProcess],
    agent_factory: type[AgentProcess],
) -> None:
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet", "--credential-ttl", "20s")
    serve(fleet, serves)
    # R's leaf is Debian's nats-server 2.9.10, the one armhf boards run.
    config_r, data_r, host_r, _ = init_device(tmp_path, "dev-r", nats_server=nats_server_29())
    config_v, data_v, host_v, ports_v = init_device(tmp_path, "dev-v")
    ok(enroll(fleet, config_r, fleet.token("role=renews")))
    ok(enroll(fleet, config_v, fleet.token("role=revoked")))
    first = jwt.decode(jwt.read_creds(data_r / "keys" / "upstream.creds").jwt).claims
    agent_r = agent_factory(config_r, data_r).start()
    agent_v = agent_factory(config_v, data_v).start()
    assert agent_r.wait_ready()["nats_server_version"].startswith("2.9.")
    agent_v.wait_ready()
    await wait_for_hosts(fleet_hub.client_url, fleet_hub.client_creds, {host_r, host_v})

    revoked = json.loads(ok(fleet_cli(
        "revoke", host_v, "--operator-seed", str(fleet_hub.operator_seed),
        "--account-jwt", str(fleet_hub.account_jwt), "--json", fleet_dir=fleet.path,
    )))  # fmt: skip
    assert revoked["device"]["host_key"] == host_v and revoked["device"]["revoked"] is True
    assert revoked["account_jwt"] == str(fleet_hub.account_jwt) and revoked["nsc_commands"] == []
    assert revoked["user_keys"] == [revoked["device"]["user_key"]]

    def renewed() -> dict[str, object] | None:
        claims = jwt.decode(jwt.read_creds(data_r / "keys" / "upstream.creds").jwt).claims
        return claims if claims["iat"] != first["iat"] else None

    second = wait_until(renewed, 40, "device R to renew its credentials")
    assert second["exp"] > first["exp"] and second["sub"] == first["sub"]
    # Past the first JWT's expiry R is still on the hub, with its renewed credentials.
    await asyncio.sleep(max(0.0, first["exp"] - time.time() + 1))
    await wait_for_hosts(fleet_hub.client_url, fleet_hub.client_creds, {host_r})

    def says_revoked() -> str | None:
        status = run_cli("status", "--config", str(config_v))
        return status.stdout if "credentials: revoked" in status.stdout else None

    wait_until(says_revoked, 40, "status to say the credentials are revoked")
    assert "refused to renew" in agent_v.log()
    # V keeps serving its own lattice.
    async with connected(
        f"nats://127.0.0.1:{ports_v['client']}", nkeys_seed_str=agent_seed(data_v)
    ) as local:
        inventory = await local.request(f"wasmbus.ctl.default.get.{host_v}.inv", b"", timeout=5)
        assert json.loads(inventory.data)["host_id"] == host_v
    # Once the hub has the re-signed account JWT, V's credentials are refused outright.
    await fleet_hub.push_account()
    refusal = await connection_refused(fleet_hub.client_url, data_v / "keys" / "upstream.creds")
    assert refusal is not None and "Authorization Violation" in refusal
    assert (
        await connection_refused(fleet_hub.client_url, data_r / "keys" / "upstream.creds") is None
    )
    devices = {d["host_key"]: d for d in fleet.devices()}
    assert devices[host_v]["revoked"] and not devices[host_r]["revoked"]
    assert devices[host_r]["last_renew"]
    assert agent_v.process is not None and agent_v.process.poll() is None

    # Without the operator seed, revoke says what to run with nsc.
    config_w, _, host_w, _ = init_device(tmp_path, "dev-w")
    ok(enroll(fleet, config_w, fleet.token()))
    printed = ok(run_cli("fleet", "revoke", host_w, "--dir", str(fleet.path)))
    user_w = next(d for d in fleet.devices() if d["host_key"] == host_w)["user_key"]
    assert (
        f'nsc revocations add-user --account "$FLEET_ACCOUNT" --user-public-key {user_w}' in printed
    )
    assert agent_r.terminate() == 0 and agent_v.terminate() == 0


async def test_fleet_uplink_init_uses_the_fleet_directory(
    tmp_path: Path, fleet_hub: FleetHub
) -> None:
    """``fleet uplink init --dir`` finds the hub and its credentials in the fleet directory."""
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet")
    made = json.loads(ok(run_cli("fleet", "uplink", "init", "--dir", str(fleet.path), "--json")))
    assert_documented_keys(["fleet", "uplink", "init"], made)
    assert made["stream"] == "LATTICE_EDGE_UPLINK" and made["messages"] == 0
    assert made["subjects"] == ["lattice-edge.uplink.>"]
    async with connected(fleet_hub.client_url, fleet_hub.client_creds) as owner:
        info = await owner.jetstream().stream_info(made["stream"])
    assert info.config.duplicate_window == made["duplicate_window_s"]
