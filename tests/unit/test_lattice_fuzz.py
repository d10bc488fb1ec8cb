"""Hostile input for every lattice decoder: a typed value or our own error, nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ControlRequestError, InvocationError
from agent.identity.keys import KeyKind, generate
from agent.lattice import control_codec as cc
from agent.lattice.invocation import (
    Invocation,
    InvocationResponse,
    WasmCloudEntity,
    new_invocation,
    validate_invocation,
)
from agent.lattice.subjects import ControlSubject, parse_control_subject

CLUSTER = generate(KeyKind.CLUSTER)
ACTOR = generate(KeyKind.MODULE).public_key
VALID = new_invocation(
    WasmCloudEntity.actor("__WASH__"),
    WasmCloudEntity.actor(ACTOR),
    "Echo.Echo",
    b"payload",
    cluster_key=CLUSTER,
    host_id=CLUSTER.public_key,
    now=1_700_000_000,
)
VALID_WIRE: dict[str, Any] = msgpack.unpackb(VALID.encode(), raw=False)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def decode_and_validate(data: bytes) -> None:
    try:
        inv = Invocation.decode(data)
    except InvocationError:
        return
    assert isinstance(inv, Invocation)
    # whatever decodes also re-encodes (an omitted content_length is written as len(msg))
    length = len(inv.msg) if inv.content_length is None else inv.content_length
    assert Invocation.decode(inv.encode()) == dataclasses.replace(inv, content_length=length)
    with contextlib.suppress(InvocationError):
        validate_invocation(
            inv, cluster_issuers=[CLUSTER.public_key], expected_target_pk=ACTOR, now=1_700_000_001
        )


def decode_response(data: bytes) -> None:
    with contextlib.suppress(InvocationError):
        assert isinstance(InvocationResponse.decode(data), InvocationResponse)


@FUZZ
@given(st.binary(max_size=300))
def test_invocation_bytes(data: bytes) -> None:
    decode_and_validate(data)
    decode_response(data)


@FUZZ
@given(values)
def test_invocation_msgpack(value: Any) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    decode_and_validate(data)
    decode_response(data)


@FUZZ
@given(st.sampled_from(sorted(VALID_WIRE)), values)
def test_invocation_one_field_replaced(key: str, value: Any) -> None:
    wire = dict(VALID_WIRE, **{key: value})
    decode_and_validate(msgpack.packb(wire, use_bin_type=True))


@FUZZ
@given(st.sampled_from(["public_key", "contract_id", "link_name"]), values)
def test_invocation_entity_field_replaced(key: str, value: Any) -> None:
    wire = dict(VALID_WIRE, target=dict(VALID_WIRE["target"], **{key: value}))
    decode_and_validate(msgpack.packb(wire, use_bin_type=True))


@FUZZ
@given(st.text(max_size=200))
def test_encoded_claims_garbage(token: str) -> None:
    decode_and_validate(msgpack.packb(dict(VALID_WIRE, encoded_claims=token), use_bin_type=True))


@FUZZ
@given(
    st.integers(min_value=0, max_value=len(VALID.encoded_claims) - 1), st.characters(codec="utf-8")
)
def test_encoded_claims_one_char_changed(index: int, char: str) -> None:
    token = VALID.encoded_claims
    changed = token[:index] + char + token[index + 1 :]
    decode_and_validate(msgpack.packb(dict(VALID_WIRE, encoded_claims=changed), use_bin_type=True))


PARSERS: list[Callable[[bytes], object]] = [
    cc.parse_start_actor,
    cc.parse_scale_actor,
    cc.parse_update_actor,
    cc.parse_stop_host,
    cc.parse_actor_auction,
    cc.parse_linkdef_put,
    cc.parse_linkdef_del,
]


def parse_all(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parsed = parse(data)
        except ControlRequestError:
            continue
        # whatever parses can be echoed back in a JSON reply
        assert cc.encode_json(dataclasses.asdict(parsed))  # type: ignore[call-overload]


@FUZZ
@given(st.binary(max_size=300))
def test_control_bytes(data: bytes) -> None:
    parse_all(data)


@FUZZ
@given(json_values)
def test_control_json(value: Any) -> None:
    parse_all(json.dumps(value).encode())


REQUEST = {
    "actor_ref": "r", "actor_id": ACTOR, "new_actor_ref": "r2", "host_id": "N", "count": 1,
    "annotations": {}, "constraints": {}, "timeout": 1, "contract_id": "c", "provider_id": "V",
    "link_name": "default", "values": {},
}  # fmt: skip


@FUZZ
@given(st.sampled_from(sorted(REQUEST)), json_values)
def test_control_one_field_replaced(key: str, value: Any) -> None:
    parse_all(json.dumps(dict(REQUEST, **{key: value})).encode())


@FUZZ
@given(st.text(max_size=100))
def test_control_text_bodies(text: str) -> None:
    parse_all(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.text(max_size=120), st.text(max_size=20))
def test_subject_parser(subject: str, lattice: str) -> None:
    assert isinstance(parse_control_subject(subject, lattice), ControlSubject)
