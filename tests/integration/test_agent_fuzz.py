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
    def __init__(self, url: str, host_id: str, seed: str, pid: int) -> None:
        self.url = url
        self.host_id = host_id
        self.seed = seed
        self.pid = pid


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
        assert agent.process is not None
        yield Running(url, host_id, agent_seed(root / "data"), agent.process.pid)
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


def fuzzed_messages(host_id: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """(subject, body) over every control subject and the RPC subject."""
    rpc = f"wasmbus.rpc.default.{DEMO_ACTOR}"
    invocation_bodies = st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["origin", "target", "operation", "msg", "id", "encoded_claims"]),
            json_values, max_size=6,
        ).map(lambda d: msgpack.packb(d)),
    )  # fmt: skip
    control = st.tuples(st.sampled_from(control_subjects(host_id)), bodies)
    return st.one_of(control, st.tuples(st.just(rpc), invocation_bodies))


def test_every_subject_at_volume_leaves_the_agent_alive_and_flat(
    running: Running, slow: bool
) -> None:
    """Hypothesis draws batches of messages over every subject: 100k with --slow, 4k in CI.

    Each batch is sent over one connection, concurrently; every request must be answered.
    The agent's RSS after the run stays within a few MB of what it was after the first
    tenth (no per-message leak).
    """
    import psutil

    total = 100_000 if slow else 4_000
    batch = 100
    sent = [0]
    rss: list[int] = []
    agent = psutil.Process(running.pid)

    async def send(messages: list[tuple[str, bytes]]) -> None:
        client = await nats.connect(running.url, nkeys_seed_str=running.seed)
        try:
            replies = await asyncio.gather(
                *(client.request(subject, body, timeout=10) for subject, body in messages)
            )
        finally:
            await client.close()
        assert len(replies) == len(messages) and all(r.data for r in replies)

    @settings(
        max_examples=total // batch, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(messages=st.lists(fuzzed_messages(running.host_id), min_size=batch, max_size=batch))
    def storm(messages: list[tuple[str, bytes]]) -> None:
        asyncio.run(send(messages))
        sent[0] += len(messages)
        if len(rss) == 0 and sent[0] >= total // 10:
            rss.append(agent.memory_info().rss)

    storm()
    rss.append(agent.memory_info().rss)
    assert sent[0] >= total * 0.9  # hypothesis may stop a little short of max_examples
    assert agent.is_running()
    growth_mb = (rss[-1] - rss[0]) / 2**20
    print(f"{sent[0]} fuzzed messages; agent RSS {rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MB")
    assert growth_mb < 8, f"agent RSS grew {growth_mb:.1f} MB over {sent[0]} messages"


def test_still_serving_after_the_storm(running: Running) -> None:
    subject = f"wasmbus.ctl.default.get.{running.host_id}.inv"
    inventory = json.loads(asyncio.run(request(running, subject, b"")))
    assert [a["id"] for a in inventory["actors"]] == [DEMO_ACTOR]
