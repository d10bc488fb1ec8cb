"""A config reload inside a running host (in-process, through ``run_host``): the parts
that may change are swapped where they are used, and nothing else moves."""

from __future__ import annotations

from pathlib import Path

import pytest
from lattice_testing import agent_seed, free_port

from agent.config import load_config
from agent.errors import ConfigError, LatticeEdgeError
from agent.identity.keys import KeyKind, generate
from agent.identity.wascap import sign_module
from agent.lattice.client import connect
from agent.launch import run_host

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"


async def test_reload_swaps_trust_cluster_issuers_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    base = (
        f"[host]\ndata_dir = '{tmp_path / 'data'}'\nprofile = 'generic-x86_64'\n"
        f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
    )
    path.write_text(base)
    issuer, caller = generate(KeyKind.ACCOUNT), generate(KeyKind.CLUSTER)
    signed, _ = sign_module(ECHO.read_bytes(), issuer, "echo")
    module = tmp_path / "data" / "actors" / "echo.wasm"
    async with run_host(load_config(path, env={})) as host:
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_bytes(signed)
        seed = agent_seed(host.config.host.data_dir)
        async with connect(host.client_url, seed=seed) as client:
            host_id = host.keys.host_id
            with pytest.raises(LatticeEdgeError, match="not in trusted_issuers"):
                await client.start_actor(host_id, f"file://{module}", timeout=20)

            path.write_text(
                base.replace("[leaf]", "labels = { room = 'b2' }\n[leaf]")
                + f"[trust]\ntrusted_issuers = ['{issuer.public_key}']\n"
                f"cluster_issuers = ['{caller.public_key}']\n"
            )
            plan = await host.reload()
            assert {c.key for c in plan.changed} == {
                "host.labels", "trust.trusted_issuers", "trust.cluster_issuers"
            }  # fmt: skip
            assert not plan.restart_needed

            actor = (await client.start_actor(host_id, f"file://{module}", timeout=20))[
                "public_key"
            ]
            # an invocation signed by the newly trusted cluster key is accepted ...
            reply = await client.invoke(actor, "Echo", b"hi", cluster_key=caller, host_id=host_id)
            assert reply.response == b"hi"
            inventory = await client.inventory(host_id)
            assert inventory["labels"]["room"] == "b2"
            assert caller.public_key in (await client.ping())[0]["cluster_issuers"]

            # ... and refused again once the key is dropped
            path.write_text(base + f"[trust]\ntrusted_issuers = ['{issuer.public_key}']\n")
            dropped = await host.reload()
            assert [c.key for c in dropped.changed] == ["host.labels", "trust.cluster_issuers"]
            with pytest.raises(LatticeEdgeError, match="issuer"):
                await client.invoke(actor, "Echo", b"x", cluster_key=caller, host_id=host_id)
            assert "room" not in (await client.inventory(host_id))["labels"]

            path.write_text("[host]\nname = 'bad name!'\n")
            with pytest.raises(ConfigError, match=r"host\.name"):
                await host.reload()
            assert host.config.trust.trusted_issuers == (issuer.public_key,)  # kept
            again = await client.invoke(
                actor, "Echo", b"x", cluster_key=host.keys.cluster, host_id=host_id
            )
            assert again.response == b"x"
