"""Malformed JSON and msgpack thrown at every control and RPC subject of a real agent:
every request gets an error reply and the agent keeps serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lattice_testing import AgentProcess, agent_seed, free_port, run_cli

from agent.lattice.invocation import InvocationResponse

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "agent" / "runtime" / "demo" / "echo.wasm"
DEMO_ACTOR = "MARWLVHRDVRB4VZFLTHMZ37PIOVG4F5WWHK3LRECIU7UH5PWC72SQNNP"


class Running:
    def __init__(self, url: str, host_id: str, seed: str) -> None:
        self.url = url
        self.host_id = host_id
        self.seed = seed


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("fuzz")
    client, monitor = free_port(), free_port()
    result = run_cli(
        "init", "--config", str(root / "agent.toml"), "--data-dir", str(root / "data"),
        "--listen", f"127.0.0.1:{client}", "--monitor", f"127.0.0.1:{monitor}",
        "--trust-issuer", "AB2YB35FXYV3YF6DXP6H35NI4IZH4NMREFWJIEF4DQZIXF3X3MOUCPVJ",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    agent = AgentProcess(root / "agent.toml", root / "data").start()
    try:
        agent.wait_ready()
        host_id = result.stdout.strip()
        url = f"nats://127.0.0.1:{client}"
        started = run_cli("actor", "start", f"file://{DEMO}", "--config", str(root / "agent.toml"))
        assert started.returncode == 0, started.stderr
        yield Running(url, host_id, agent_seed(root / "data"))
        assert agent.process is not None and agent.process.poll() is None
    finally:
        agent.kill_all()


def control_subjects(host_id: str) -> list[str]:
    base = "wasmbus.ctl.default"
    return [
        f"{base}.cmd.{host_id}.la", f"{base}.cmd.{host_id}.sa", f"{base}.cmd.{host_id}.scale",
        f"{base}.cmd.{host_id}.upd", f"{base}.cmd.{host_id}.bogus", f"{base}.auction.actor",
        f"{base}.linkdefs.put", f"{base}.linkdefs.del",
    ]  # fmt: skip


def not_an_object(body: bytes) -> bool:
    try:
        return not isinstance(json.loads(body), dict)
    except ValueError:
        return True


# msgpack holds integers in [-2**63, 2**64); JSON gets the same range so one strategy serves
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["actor_ref", "count", "actor_id", "link_name", "constraints", "values",
                         "contract_id", "provider_id", "new_actor_ref", "annotations"]),
        json_values, max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
)  # fmt: skip


async def request(running: Running, subject: str, body: bytes) -> bytes:
    client = await nats.connect(running.url, nkeys_seed_str=running.seed)
    try:
        reply = await client.request(subject, body, timeout=5)
        return bytes(reply.data)
    finally:
        await client.close()


def is_refusal(reply: dict[str, Any]) -> bool:
    return reply.get("accepted") is False and bool(reply.get("error"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.integers(min_value=0, max_value=7), body=bodies)
def test_control_subjects_refuse_malformed_requests(
    running: Running, index: int, body: bytes
) -> None:
    subject = control_subjects(running.host_id)[index]
    reply = json.loads(asyncio.run(request(running, subject, body)))
    if not_an_object(body) or subject.endswith(".bogus"):
        assert is_refusal(reply), (subject, body, reply)
    else:
        # A well-formed object may happen to be a valid request; it is then refused for
        # what it asks (unknown actor, bad reference) or accepted — never left unanswered.
        assert isinstance(reply, dict)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: msgpack.packb(v)),
        st.dictionaries(
            st.sampled_from(["origin", "target", "operation", "msg", "id", "encoded_claims",
                             "host_id", "content_length"]),
            json_values, max_size=8,
        ).map(lambda d: msgpack.packb(d)),
    )
)  # fmt: skip
def test_rpc_refuses_malformed_invocations(running: Running, body: bytes) -> None:
    subject = f"wasmbus.rpc.default.{DEMO_ACTOR}"
    response = InvocationResponse.decode(asyncio.run(request(running, subject, body)))
    assert response.error, response


def test_still_serving_after_the_storm(running: Running) -> None:
    subject = f"wasmbus.ctl.default.get.{running.host_id}.inv"
    inventory = json.loads(asyncio.run(request(running, subject, b"")))
    assert [a["id"] for a in inventory["actors"]] == [DEMO_ACTOR]
