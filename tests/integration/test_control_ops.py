"""Control operations not covered by the cloud tour: auctions, updates, scaling, links and
claims, each checked against a running agent."""

from __future__ import annotations

from pathlib import Path

import pytest
from lattice_testing import AgentProcess, agent_seed, run_cli

from agent.identity.keys import KeyKind, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import LatticeClient, connect

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"


async def test_auction_update_scale_links_claims(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    issuer, module_key = generate(KeyKind.ACCOUNT), generate(KeyKind.MODULE)
    versions = []
    for rev in (1, 2):
        signed, _ = sign_module(
            ECHO.read_bytes(), issuer, "Echo", rev=rev, ver=f"0.{rev}.0", module_key=module_key
        )
        path = tmp_path / "data" / "actors" / f"echo-{rev}.wasm"  # the default file root
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(signed)
        versions.append(f"file://{path}")
    config = tmp_path / "agent.toml"
    init = run_cli(
        "init",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        f"127.0.0.1:{ports['client']}",
        "--monitor",
        f"127.0.0.1:{ports['monitor']}",
        "--trust-issuer",
        issuer.public_key,
        "--profile",
        "pi4b",
    )
    assert init.returncode == 0, init.stderr
    host = init.stdout.strip()
    agent = agent_factory(config, tmp_path / "data").start()
    agent.wait_ready()
    actor = module_key.public_key
    ctl = "wasmbus.ctl.default"

    seed = agent_seed(tmp_path / "data")
    async with connect(f"nats://127.0.0.1:{ports['client']}", seed=seed) as client:
        await auctions(client, host)
        await client.start_actor(host, versions[0])

        async with client.events("actor_updated") as queue:
            ack = await client.request(
                f"{ctl}.cmd.{host}.upd", {"actor_id": actor, "new_actor_ref": versions[1]}
            )
            assert ack["accepted"], ack
            updated = await client.wait_for(queue, lambda e: e["source"] == host, 20)
        assert updated["data"]["revision"] == 2
        (entry,) = (await client.inventory(host))["actors"]
        assert entry["image_ref"] == versions[1]
        assert entry["instances"][0]["revision"] == 2

        async with client.events("actor_started") as queue:
            ack = await client.request(
                f"{ctl}.cmd.{host}.scale", {"actor_id": actor, "actor_ref": versions[1], "count": 3}
            )
            assert ack["accepted"], ack
            for _ in range(2):
                await client.wait_for(queue, lambda e: e["data"]["public_key"] == actor, 20)
        (entry,) = (await client.inventory(host))["actors"]
        assert len(entry["instances"]) == 3

        refused = await client.request(
            f"{ctl}.cmd.{host}.upd", {"actor_id": "MNOTRUNNING", "new_actor_ref": versions[1]}
        )
        assert refused["accepted"] is False and "not running" in refused["error"]

        link = {"actor_id": actor, "contract_id": "wasmcloud:keyvalue", "link_name": "default",
                "provider_id": "VPROVIDER", "values": {"URL": "redis://edge"}}  # fmt: skip
        async with client.events("linkdef_set", "linkdef_deleted") as queue:
            assert (await client.request(f"{ctl}.linkdefs.put", link))["accepted"]
            await client.wait_for(queue, lambda e: e["type"].endswith("linkdef_set"), 10)
            links = (await client.request(f"{ctl}.get.links"))["links"]
            assert [(x["actor_id"], x["provider_id"]) for x in links] == [(actor, "VPROVIDER")]
            gone = {k: link[k] for k in ("actor_id", "contract_id", "link_name")}
            assert (await client.request(f"{ctl}.linkdefs.del", gone))["accepted"]
            deleted = await client.wait_for(
                queue, lambda e: e["type"].endswith("linkdef_deleted"), 10
            )
        assert deleted["data"]["provider_id"] == "VPROVIDER"
        assert (await client.request(f"{ctl}.get.links"))["links"] == []

        claims = (await client.request(f"{ctl}.get.claims"))["claims"]
        assert [(c["sub"], c["iss"], c["rev"], c["version"]) for c in claims] == [
            (actor, issuer.public_key, "2", "0.2.0")
        ]
    assert agent.terminate() == 0


async def auctions(client: LatticeClient, host: str) -> None:
    subject = "wasmbus.ctl.default.auction.actor"
    bid = await client.request(
        subject, {"actor_ref": "file:///x.wasm", "constraints": {"lattice-edge.profile": "pi4b"}}
    )
    assert bid == {"actor_ref": "file:///x.wasm",
                   "constraints": {"lattice-edge.profile": "pi4b"}, "host_id": host}  # fmt: skip
    inbox = client.nats.new_inbox()
    replies = await client.nats.subscribe(inbox)
    await client.nats.publish(
        subject, b'{"actor_ref": "x", "constraints": {"lattice-edge.profile": "pi5"}}', reply=inbox
    )
    with pytest.raises(TimeoutError):
        await replies.next_msg(timeout=1.0)  # a host that does not fit stays silent
    await replies.unsubscribe()
