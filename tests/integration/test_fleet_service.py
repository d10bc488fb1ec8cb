"""The fleet service under stress, with real processes: killed with -9 mid-enrollment, two
instances racing for one token, and every endpoint fuzzed with malformed requests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_testing import (
    Fleet,
    FleetHub,
    ServeProcess,
    connected,
    enroll,
    enroll_by_hand,
    fleet_cli,
    init_device,
    ok,
    one_error_line,
    serve,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lattice_testing import CLI, wait_until

from agent.fleet import subjects
from agent.fleet.registrar import FAILPOINT_ENV
from agent.identity.keys import KeyKind, generate
from agent.leaf.binary import find_nats_server

pytestmark = pytest.mark.integration


async def test_serve_killed_mid_enrollment_spends_the_token_once_for_that_device(
    tmp_path: Path, fleet_hub: FleetHub, serves: list[ServeProcess]
) -> None:
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet")
    first = serve(fleet, serves)
    token = fleet.token("site=x")
    first.stop()
    crashing = serve(fleet, serves, **{FAILPOINT_ENV: "after-spend"})
    config, data, host, _ = init_device(tmp_path, "dev-x")
    before = config.read_text()
    attempt = subprocess.Popen(
        [CLI, "enroll", "--url", fleet_hub.client_url, "--bootstrap-creds", str(fleet.bootstrap),
         "--token", token, "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: "failpoint after-spend reached" in crashing.log(), 30, "the failpoint")
    crashing.kill9()
    out, err = attempt.communicate(timeout=60)
    line = one_error_line(subprocess.CompletedProcess(attempt.args, attempt.returncode, out, err))
    assert "did not answer" in line or "no fleet service" in line
    # The failed attempt changed nothing on the device but left its pending key.
    assert not (data / "keys" / "upstream.creds").exists()
    assert config.read_text() == before
    assert (data / "keys" / "enroll-pending.json").stat().st_mode & 0o777 == 0o600

    serve(fleet, serves)  # restarted, without the failpoint
    spent = [t for t in fleet.tokens() if t["state"] == "spent"]
    assert [t["host_key"] for t in spent] == [host]  # spent once, for this very device
    # Anyone else is refused; the device itself, retrying, completes its enrollment.
    assert (await enroll_by_hand(fleet, token))["reason"] == "token-used"
    assert ok(enroll(fleet, config, token)).strip() == host
    assert not (data / "keys" / "enroll-pending.json").exists()
    [device] = fleet.devices()
    assert device["host_key"] == host and device["labels"]["site"] == "x"
    assert "already used" in one_error_line(enroll(fleet, config, token))


async def test_two_serve_instances_never_spend_a_token_twice(
    tmp_path: Path, fleet_hub: FleetHub, serves: list[ServeProcess]
) -> None:
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet")
    serve(fleet, serves)
    serve(fleet, serves)
    tokens = [fleet.token() for _ in range(3)]
    for token in tokens:
        results = await asyncio.gather(*(enroll_by_hand(fleet, token) for _ in range(12)))
        winners = [r for r in results if "user_jwt" in r]
        assert len(winners) == 1, results
        assert all(r["code"] == 409 for r in results if "user_jwt" not in r), results
    assert len(fleet.devices()) == len(tokens)
    # Both instances took part.
    async with connected(fleet_hub.client_url, fleet_hub.client_creds) as client:
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        await client.publish("$SRV.STATS.lattice-edge-fleet", b"", reply=inbox)
        stats = [json.loads((await sub.next_msg(timeout=3)).data) for _ in range(2)]
    served = [
        sum(e["num_requests"] for e in s["endpoints"] if e["name"] == "enroll") for s in stats
    ]
    assert all(n > 0 for n in served) and sum(served) == 36, served


async def test_without_an_answering_service_the_commands_say_which_to_start(
    tmp_path: Path, fleet_hub: FleetHub
) -> None:
    fleet = await Fleet.create(fleet_hub, tmp_path / "fleet")
    serve_it = f"is 'lattice-edge fleet serve --dir {fleet.path}' running?"
    absent = one_error_line(fleet_cli("devices", fleet_dir=fleet.path))
    assert f"no fleet service answers for fleet {fleet.fleet_id}" in absent and serve_it in absent
    # Something holds the subject but never answers: --timeout bounds the wait.
    async with connected(fleet_hub.client_url, fleet_hub.client_creds) as silent:
        await silent.subscribe(subjects.admin(fleet.fleet_id, "token.list"))
        await silent.flush()
        hung = fleet_cli("token", "list", "--timeout", "0.5", fleet_dir=fleet.path, timeout=20)
    line = one_error_line(hung)
    assert "did not answer within 0.5 s" in line and serve_it in line, line
    assert "token.list" not in line and "--timeout" in line


# --- fuzzing -----------------------------------------------------------------------------------


class Served:
    def __init__(self, hub: FleetHub, fleet: Fleet) -> None:
        self.hub = hub
        self.fleet = fleet
        base = f"lattice-edge.fleet.{fleet.fleet_id}"
        host = generate(KeyKind.SERVER).public_key
        self.subjects = [
            f"{base}.enroll.challenge", f"{base}.enroll.complete", f"{base}.device.{host}.renew",
            f"{base}.admin.token.create", f"{base}.admin.devices", f"{base}.admin.revoke",
            f"{base}.admin.token.revoke",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fleet-fuzz")
    with FleetHub(root / "hub", find_nats_server().path) as hub:
        fleet = asyncio.run(Fleet.create(hub, root / "fleet"))
        process = ServeProcess(fleet.path).start()
        try:
            yield Served(hub, fleet)
            assert process.process is not None and process.process.poll() is None
            assert "Traceback" not in process.log(), process.log()
        finally:
            process.stop()


async def ask(served: Served, subject: str, body: bytes) -> dict[str, Any]:
    async with connected(served.hub.client_url, served.hub.client_creds) as client:
        reply = await client.request(subject, body, timeout=5)
    result: dict[str, Any] = json.loads(reply.data)
    assert reply.headers and reply.headers.get("Nats-Service-Error-Code") == str(result["code"])
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=10,
)  # fmt: skip
FIELDS = ["token", "nonce", "user_key", "host_key", "user_signature", "host_signature", "facts",
          "labels", "token_id", "ts", "signature", "args", "bogus"]  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.integers(min_value=0, max_value=6), body=bodies)
def test_every_endpoint_answers_bad_input_with_an_error_naming_it(
    served: Served, index: int, body: bytes
) -> None:
    subject = served.subjects[index]
    reply = asyncio.run(ask(served, subject, body))
    assert reply["code"] in (400, 403, 404, 409, 410), reply  # never a 500, never a repr
    assert isinstance(reply["error"], str) and reply["error"]
    assert "Error(" not in reply["error"] and "Traceback" not in reply["error"]
    try:  # as strict as the service: Infinity and NaN are not JSON
        decoded = json.loads(body, parse_constant=lambda name: float(f"invalid {name}"))
    except ValueError:
        assert reply["code"] == 400 and "body" in reply["error"], reply
        return
    if not isinstance(decoded, dict):
        assert reply["code"] == 400 and "JSON object" in reply["error"], reply
    elif "bogus" in decoded:
        assert "unknown field '" in reply["error"], reply  # it names the first it found


@pytest.mark.parametrize(
    ("index", "body", "expected"),
    [
        (0, b"x" * 70_000, "more than 65536"),
        (1, b'{"token": 5}', "'token' must be a string"),
        (1, b'{"token": "LE1.x", "nonce": "n", "user_key": "nope"}', "'user_key' is not"),
        (2, b'{"host_key": "N", "user_key": "U", "ts": "soon", "signature": "x"}', "not a public"),
        (3, b'{"ts": 1, "nonce": "n", "args": {}, "signature": "AAAA"}', "64-byte"),
        (0, b"\xff\xfe", "not UTF-8"),
        (0, b"[1, 2]", "JSON object"),
        (0, b'{"token_id": "A", "extra": 1}', "unknown field 'extra'"),
        (0, b'{"token_id": NaN}', "not JSON"),
    ],
)
def test_each_kind_of_bad_input_is_named(
    served: Served, index: int, body: bytes, expected: str
) -> None:
    reply = asyncio.run(ask(served, served.subjects[index], body))
    assert reply["code"] == 400 and expected in reply["error"], reply


def test_still_serving_after_the_storm(served: Served) -> None:
    async def check() -> None:
        async with connected(served.hub.client_url, served.hub.client_creds) as client:
            ping = json.loads((await client.request("$SRV.PING.lattice-edge-fleet", b"")).data)
            assert ping["name"] == "lattice-edge-fleet"
            assert ping["metadata"]["fleet"] == served.fleet.fleet_id
            reply = await client.request(served.subjects[0], b'{"token_id": "AAAAAAAAAA"}')
            assert "nonce" in json.loads(reply.data)

    asyncio.run(check())
    assert os.environ.get(FAILPOINT_ENV) is None
