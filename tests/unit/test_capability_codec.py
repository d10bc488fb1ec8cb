"""Pure parts of the built-in capabilities: payload codec, key encoding, stored values,
subject checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.capabilities.base import operation_name
from agent.capabilities.codec import Struct, decode, decode_string_or_field, decode_struct
from agent.capabilities.kvstore import (
    KeyValueSettings,
    Stored,
    original_key,
    pack_value,
    storage_key,
    unpack_value,
)
from agent.capabilities.messaging import MessagingLimits, check_subject
from agent.errors import CapabilityError, PayloadError

# nats-py's own rule for KV keys (nats/js/kv.py VALID_KEY_RE and _is_key_valid).
NATS_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


def nats_key_valid(key: str) -> bool:
    return bool(NATS_KEY.fullmatch(key)) and not key.startswith(".") and not key.endswith(".")


@given(st.text(min_size=1, max_size=200))
def test_every_key_maps_to_a_valid_nats_key_and_back(key: str) -> None:
    if any(0xD800 <= ord(char) <= 0xDFFF for char in key):
        return  # lone surrogates cannot arrive in msgpack str (always valid UTF-8)
    stored = storage_key(key)
    assert nats_key_valid(stored), stored
    assert original_key(stored) == key


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_key_encoding_is_one_to_one(a: str, b: str) -> None:
    if a != b and not any(0xD800 <= ord(c) <= 0xDFFF for c in a + b):
        assert storage_key(a) != storage_key(b)


def test_plain_keys_are_stored_as_themselves() -> None:
    assert storage_key("sensor/42.temp") == "sensor/42.temp"
    assert storage_key("a b").startswith("=")
    assert storage_key("_kv.x").startswith("=")  # NATS reserves the _kv prefix
    assert storage_key("a..b").startswith("=")


@pytest.mark.parametrize(
    "value",
    [
        Stored("string", "plain"),
        Stored("string", ""),
        Stored("string", '{"json": [1]}'),
        Stored("string", "soon", expires_at_ms=1_700_000_000_000),
        Stored("list", items=("a", "b", "a")),
        Stored("set", items=("x",)),
        Stored("list"),
    ],
)
def test_stored_values_round_trip(value: Stored) -> None:
    assert unpack_value(pack_value(value), "k") == value


def test_plain_strings_are_stored_raw_and_others_tagged() -> None:
    assert pack_value(Stored("string", "héllo")) == "héllo".encode()
    assert pack_value(Stored("list", items=("a",))).startswith(b"\xc1")
    with pytest.raises(CapabilityError, match="not UTF-8 text"):
        unpack_value(b"\xff\xfe", "k")
    with pytest.raises(CapabilityError, match="corrupt"):
        unpack_value(b"\xc1" + msgpack.packb(["list", [1, 2]]), "k")


def test_expiry() -> None:
    value = Stored("string", "v", expires_at_ms=1000)
    assert not value.expired(999)
    assert value.expired(1000)
    assert not Stored("string", "v").expired(10**15)


def test_decode_prefixes_and_garbage() -> None:
    assert decode(b"\xc1" + msgpack.packb("k"), "w") == "k"
    assert decode(b"\x7f", "w") == 127  # a lone 0x7f is msgpack, not the CBOR marker
    cases = {
        b"": "empty",
        b"\x7f\xa1k": "CBOR-encoded payloads are not supported",
        b"\x01\x02": "bytes after its msgpack value",
        b"\xa2\xff\xfe": "not UTF-8",
        b"\x91" * 100_000: "nested too deeply",
        b"\xc1\xc1": "reserves",
        b"\x92\x01": "not valid msgpack",
        b"\x81\x01\x02": "not valid msgpack",
    }
    for payload, message in cases.items():
        with pytest.raises(PayloadError, match=message) as caught:
            decode(payload, "ns Op")
        assert str(caught.value).startswith("ns Op: ")


def test_struct_fields() -> None:
    struct = decode_struct(
        msgpack.packb({"s": "x", "b": b"\x00", "n": 5, "t": True, "z": None}), "w"
    )
    assert (struct.string("s"), struct.blob("b"), struct.integer("n", 0, 9)) == ("x", b"\x00", 5)
    assert struct.blob("s") == b"x"  # serde_bytes also reads a str
    assert struct.optional_string("z") is None
    assert struct.string("missing", "d") == "d"
    checks: list[tuple[Callable[[Struct], object], str]] = [
        (lambda s: s.integer("t", 0, 9), "must be an integer, got a boolean"),
        (lambda s: s.integer("n", 0, 4), "is 5, outside"),
        (lambda s: s.string("b"), "must be a string, got bin"),
        (lambda s: s.string("z"), "missing field 'z'"),
        (lambda s: s.string_list("s"), "must be a list of strings"),
    ]
    for call, message in checks:
        with pytest.raises(PayloadError, match=message):
            call(struct)
    assert isinstance(struct, Struct)


def test_string_inputs() -> None:
    assert decode_string_or_field(msgpack.packb("k"), "w", "key") == "k"
    assert decode_string_or_field(msgpack.packb({"listName": "l"}), "w", "listName", "key") == "l"
    with pytest.raises(PayloadError, match="has no 'key' field"):
        decode_string_or_field(msgpack.packb({"other": "k"}), "w", "key")
    with pytest.raises(PayloadError, match="expected a msgpack string, got an array"):
        decode_string_or_field(msgpack.packb(["k"]), "w", "key")


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("a", True), ("a.b.c", True), ("_INBOX.abc", True), ("ünï.code", True),
        ("a.*", False), ("a.>", False), ("a*b", False), ("a b", False), ("a\x00", False),
        ("", False), ("a.", False), ("$SYS.REQ", False), ("wasmbus.rpc.x", False),
    ],
)  # fmt: skip
def test_check_subject(subject: str, ok: bool) -> None:
    limits = MessagingLimits()
    if ok:
        assert check_subject(subject, limits) == subject
    else:
        with pytest.raises(PayloadError):
            check_subject(subject, limits)


def test_operation_names() -> None:
    assert operation_name("KeyValue.Get", "KeyValue") == "Get"
    assert operation_name("Get", "KeyValue") == "Get"
    assert operation_name("Other.Get", "KeyValue") == "Other.Get"


@pytest.mark.parametrize(
    "kwargs",
    [{"bucket": "bad name"}, {"bucket": "a.b"}, {"max_value_bytes": 0},
     {"max_value_bytes": 10, "max_bytes": 5}, {"cas_attempts": 0}, {"api_timeout": 0}],
)  # fmt: skip
def test_settings_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KeyValueSettings(**kwargs)
    with pytest.raises(ValueError):
        MessagingLimits(default_timeout=5, max_timeout=1)
