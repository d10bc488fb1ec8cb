"""RPC Invocation / InvocationResponse codecs and anti-forgery validation."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import uuid
from typing import Any

import msgpack
import pytest

from agent.errors import AntiForgeryError, ChunkedInvocationError, InvocationError
from agent.identity.keys import KeyKind, KeyPair, generate
from agent.lattice.invocation import (
    ANTI_FORGERY_CHECKS,
    WASH_LEGACY_HOST_ID,
    Invocation,
    InvocationResponse,
    WasmCloudEntity,
    invocation_hash,
    new_invocation,
    validate_invocation,
)

NOW = 1_700_000_000.0
CLUSTER = generate(KeyKind.CLUSTER)
OTHER_CLUSTER = generate(KeyKind.CLUSTER)
HOST = generate(KeyKind.SERVER)
ACTOR = generate(KeyKind.MODULE).public_key
OTHER_ACTOR = generate(KeyKind.MODULE).public_key
PROVIDER = WasmCloudEntity.provider(
    "VAG3QITQQ2ODAOWB5TTQSDJ53XK3SHBEIFNK4AYJ5RKAX2UNSCAPHA5M", "wasmcloud:httpserver", "default"
)
# the later wash's fixed, valid server key (wash-cli call.rs `WASH_HOST_ID`)
WASH_HOST_ID = "NAWASHVALZUZPZNXPIF6HGQ4OMJYLXQ4B2WZZ5AMBCXKWEQPYXDOIWMA"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(claims: dict[str, Any], key: KeyPair, header: dict[str, str] | None = None) -> str:
    """A JWT written by hand, as wascap writes one (independent of the code under test)."""
    head = _b64(json.dumps(header or {"typ": "jwt", "alg": "Ed25519"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(key.sign(f'{head}.{body}'.encode()))}"


def valid(msg: bytes = b"\x81\xa5hello\xa5world", **kw: Any) -> Invocation:
    kw.setdefault("host_id", HOST.public_key)
    return new_invocation(
        PROVIDER, WasmCloudEntity.actor(ACTOR), "HttpServer.HandleRequest", msg,
        cluster_key=CLUSTER, now=NOW, **kw,
    )  # fmt: skip


def check(inv: Invocation, **kw: Any) -> None:
    kw.setdefault("cluster_issuers", [CLUSTER.public_key])
    kw.setdefault("expected_target_pk", ACTOR)
    kw.setdefault("now", NOW + 1)
    validate_invocation(inv, **kw)


def rejected(inv: Invocation, expected: str, **kw: Any) -> str:
    with pytest.raises(AntiForgeryError) as info:
        check(inv, **kw)
    assert info.value.check == expected, str(info.value)
    assert expected in ANTI_FORGERY_CHECKS
    return str(info.value)


def resigned(inv: Invocation, key: KeyPair = CLUSTER, **changes: Any) -> Invocation:
    """``inv`` with claims rebuilt from ``changes`` and signed by ``key``."""
    claims: dict[str, Any] = {
        "jti": "x",
        "iat": int(NOW),
        "iss": key.public_key,
        "sub": inv.id,
        "wascap": {"target_url": inv.target_url, "origin_url": inv.origin_url, "hash": inv.hash},
        "wascap_revision": 3,
    }
    header = changes.pop("header", None)
    claims.update(changes)
    return dataclasses.replace(inv, encoded_claims=sign_token(claims, key, header))


# --- entities and hashes -----------------------------------------------------------------


def test_entity_urls() -> None:
    assert WasmCloudEntity.actor(ACTOR).url() == f"wasmbus://{ACTOR}"
    # wasmCloud tests the first letter case-insensitively
    assert WasmCloudEntity("mabc").url() == "wasmbus://mabc"
    assert PROVIDER.url() == f"wasmbus://wasmcloud/httpserver/default/{PROVIDER.public_key}"
    odd = WasmCloudEntity("Vxxx", "Acme:Thing Two", "My Link")
    assert odd.url() == "wasmbus://acme/thing_two/my_link/Vxxx"
    # wash's fake origin key is not an actor key: the long form with empty parts
    assert WasmCloudEntity("__WASH__").url() == "wasmbus:////__WASH__"


def test_otp_target_url_vector() -> None:
    # the routing address asserted in wasmcloud-otp's inv.rs test
    target = WasmCloudEntity.provider("Vxxx", "wasmcloud:messaging", "default")
    inv = dataclasses.replace(valid(), target=target, operation="OP_TESTING")
    assert inv.target_url == "wasmbus://wasmcloud/messaging/default/Vxxx/OP_TESTING"


def test_hash_is_sha256_of_the_concatenation() -> None:
    expected = hashlib.sha256(b"wasmbus://Mwasmbus://Vx/opop" + b"\x00\x01").hexdigest().upper()
    assert invocation_hash("wasmbus://M", "wasmbus://Vx/op", "op", b"\x00\x01") == expected


# --- codecs --------------------------------------------------------------------------------


def test_invocation_round_trip() -> None:
    inv = valid(trace_context={"traceparent": "00-abc-def-01"})
    again = Invocation.decode(inv.encode())
    assert again == inv
    assert again.trace_context == {"traceparent": "00-abc-def-01"}
    assert again.content_length == len(inv.msg)


def test_invocation_wire_shape() -> None:
    wire = msgpack.unpackb(valid().encode(), raw=False)
    assert set(wire) == {
        "origin", "target", "operation", "msg", "id", "encoded_claims", "host_id",
        "content_length", "traceContext",
    }  # fmt: skip
    assert isinstance(wire["msg"], bytes)  # bin, not str or array
    assert wire["target"] == {"public_key": ACTOR, "contract_id": "", "link_name": ""}


def test_decode_is_lenient_where_senders_differ() -> None:
    inv = valid(msg=b"hi")
    wire = msgpack.unpackb(inv.encode(), raw=False)
    del wire["content_length"], wire["traceContext"]  # OTP may omit both
    wire["msg"] = "hi"  # a str body
    del wire["target"]["contract_id"], wire["target"]["link_name"]  # empty for actors anyway
    again = Invocation.decode(msgpack.packb(wire, use_bin_type=True))
    assert again.msg == b"hi" and again.content_length is None and again.trace_context == {}
    assert again.target == WasmCloudEntity.actor(ACTOR)
    wire["msg"] = [104, 105]  # Vec<u8> without serde_bytes
    assert Invocation.decode(msgpack.packb(wire, use_bin_type=True)).msg == b"hi"
    check(again)  # still valid: the signed hash covers the same bytes


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"operation": 7}, "'operation' must be a string"),
        ({"operation": None}, "'operation' is missing"),
        ({"origin": "M..."}, "'origin' must be a map"),
        ({"target": {"contract_id": ""}}, "'target.public_key' is missing"),
        ({"msg": {"a": 1}}, "'msg' must be binary"),
        ({"msg": [1, 256]}, "'msg' must be binary"),
        ({"content_length": -1}, "'content_length' is out of range"),
        ({"content_length": True}, "'content_length' must be an unsigned integer"),
        ({"content_length": "3"}, "'content_length' must be an unsigned integer"),
        ({"traceContext": {"a": 1}}, "'traceContext' must map strings"),
        ({"traceContext": []}, "'traceContext' must be a map"),
        ({"id": "x" * 5000}, "'id' is longer than"),
        ({"encoded_claims": b"abc"}, "'encoded_claims' must be a string"),
    ],
)
def test_decode_errors_name_the_field(change: dict[str, Any], needle: str) -> None:
    wire = msgpack.unpackb(valid().encode(), raw=False)
    wire.update(change)
    with pytest.raises(InvocationError, match=needle):
        Invocation.decode(msgpack.packb(wire, use_bin_type=True))


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x92\x01\x02", msgpack.packb("str"), b"\x81\xa1a", b"\x80\x80"]
)
def test_decode_rejects_non_maps_and_garbage(data: bytes) -> None:
    with pytest.raises(InvocationError):
        Invocation.decode(data)
    with pytest.raises(InvocationError):
        InvocationResponse.decode(data)


def test_decode_rejects_oversize() -> None:
    with pytest.raises(InvocationError, match="larger than"):
        Invocation.decode(b"\x80" * (8 * 1024 * 1024 + 1))


def test_response_round_trip_and_shape() -> None:
    ok = InvocationResponse.success("id-1", b"\x01\x02", instance_id="inst")
    assert InvocationResponse.decode(ok.encode()) == ok and ok.ok
    wire = msgpack.unpackb(ok.encode(), raw=False)
    assert wire["content_length"] == 2 and "error" not in wire and wire["instance_id"] == "inst"
    bad = InvocationResponse.failure("id-1", "boom")
    again = InvocationResponse.decode(bad.encode())
    assert again.error == "boom" and not again.ok and again.msg == b""
    assert msgpack.unpackb(bad.encode(), raw=False)["content_length"] == 0


def test_failure_is_bounded_and_never_empty() -> None:
    assert len(InvocationResponse.failure("i", "x" * 100_000).error or "") < 9000
    assert InvocationResponse.failure("i", "").error


def test_response_from_a_rust_host_decodes() -> None:
    raw = msgpack.packb(
        {"msg": b"ok", "invocation_id": "abc", "content_length": 2, "traceContext": {}},
        use_bin_type=True,
    )
    resp = InvocationResponse.decode(raw)
    assert resp.ok and resp.msg == b"ok" and not resp.is_chunked
    chunked = msgpack.packb({"msg": b"", "invocation_id": "a", "content_length": 5})
    assert InvocationResponse.decode(chunked).is_chunked


def test_new_invocation_refuses_unencodable_fields() -> None:
    target = WasmCloudEntity.actor(ACTOR)
    with pytest.raises(InvocationError, match="'operation'"):
        new_invocation(PROVIDER, target, "Op\ud800", b"", cluster_key=CLUSTER, host_id="N")
    with pytest.raises(InvocationError, match="'msg'"):
        text: Any = "text"
        new_invocation(PROVIDER, target, "Op", text, cluster_key=CLUSTER, host_id="N")


def test_new_invocation_requires_a_cluster_key() -> None:
    with pytest.raises(InvocationError, match="cluster"):
        new_invocation(
            PROVIDER, WasmCloudEntity.actor(ACTOR), "Op", b"", cluster_key=HOST, host_id="N"
        )


# --- anti-forgery ----------------------------------------------------------------------


def test_valid_invocation_passes() -> None:
    inv = Invocation.decode(valid().encode())
    claims = validate_invocation(
        inv, cluster_issuers=[CLUSTER.public_key], expected_target_pk=ACTOR, now=NOW
    )
    assert claims.issuer == CLUSTER.public_key and claims.subject == inv.id
    assert claims.target_url == f"wasmbus://{ACTOR}/HttpServer.HandleRequest"


def test_wrong_issuer() -> None:
    message = rejected(valid(), "issuer", cluster_issuers=[OTHER_CLUSTER.public_key])
    assert "not among the cluster issuers" in message


def test_non_cluster_issuer() -> None:
    account = generate(KeyKind.ACCOUNT)
    inv = resigned(valid(), account)
    message = rejected(inv, "issuer_kind", cluster_issuers=[account.public_key])
    assert "account key" in message


def test_tampered_msg() -> None:
    inv = dataclasses.replace(valid(), msg=b"\x81\xa5hello\xa5WORLD")
    assert "hash" in rejected(inv, "hash")


def test_tampered_operation() -> None:
    inv = dataclasses.replace(valid(), operation="HttpServer.Evil")
    assert "signed for" in rejected(inv, "target_url")


def test_tampered_origin() -> None:
    inv = dataclasses.replace(valid(), origin=WasmCloudEntity.actor(OTHER_ACTOR))
    rejected(inv, "origin_url")


def test_wrong_target() -> None:
    # a correctly signed invocation for another actor, delivered to ours
    inv = dataclasses.replace(valid(), target=WasmCloudEntity.actor(OTHER_ACTOR))
    inv = resigned(inv)
    assert "is not the actor" in rejected(inv, "target")
    # retargeting without re-signing is caught by the URL check first
    tampered = dataclasses.replace(valid(), target=WasmCloudEntity.actor(OTHER_ACTOR))
    rejected(tampered, "target_url", expected_target_pk=OTHER_ACTOR)


def test_expired_and_not_yet_valid() -> None:
    assert "expired" in rejected(resigned(valid(), exp=int(NOW) - 10), "expired")
    rejected(resigned(valid(), nbf=int(NOW) + 3600), "not_yet_valid")
    check(resigned(valid(), exp=int(NOW) + 3600, nbf=int(NOW) - 5))


def test_bad_signature() -> None:
    inv = valid()
    head, body, sig = inv.encoded_claims.split(".")
    forged = _b64(bytes(64)) if sig != _b64(bytes(64)) else _b64(b"\x01" * 64)
    assert "signature" in rejected(
        dataclasses.replace(inv, encoded_claims=f"{head}.{body}.{forged}"), "signature"
    )
    # claims re-encoded by someone without the key: the old signature no longer fits
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["wascap"]["hash"] = "00"
    altered = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    rejected(dataclasses.replace(inv, encoded_claims=altered), "signature")


def test_format_header_claims_subject() -> None:
    inv = valid()
    rejected(dataclasses.replace(inv, encoded_claims="a.b"), "format")
    rejected(dataclasses.replace(inv, encoded_claims="!!.??.**"), "format")
    rejected(resigned(inv, header={"typ": "jwt", "alg": "HS256"}), "header")
    rejected(resigned(inv, header={"typ": "JOSE", "alg": "Ed25519"}), "header")
    rejected(resigned(inv, wascap={"target_url": inv.target_url}), "claims")
    rejected(resigned(inv, exp="tomorrow"), "claims")
    rejected(resigned(inv, sub="another-id"), "subject")


def test_host_id_rules() -> None:
    rejected(valid(host_id="NOTAKEY"), "host_id")
    rejected(valid(host_id=generate(KeyKind.ACCOUNT).public_key), "host_id")
    rejected(valid(host_id=" " + HOST.public_key), "host_id")
    check(valid(host_id=HOST.public_key))
    # the OTP host sets host_id to its cluster public key
    check(valid(host_id=CLUSTER.public_key))
    check(valid(host_id=WASH_LEGACY_HOST_ID))


def test_content_length_and_chunking() -> None:
    inv = valid()
    with pytest.raises(InvocationError, match="content_length") as info:
        check(dataclasses.replace(inv, content_length=len(inv.msg) + 1))
    assert not isinstance(info.value, AntiForgeryError)
    chunked = dataclasses.replace(inv, msg=b"", content_length=2_000_000)
    with pytest.raises(ChunkedInvocationError):
        check(chunked)
    # an empty body that really is empty is fine
    check(valid(msg=b""))
    # OTP may omit content_length
    check(dataclasses.replace(inv, content_length=None))


def test_signature_checked_before_chunking() -> None:
    inv = dataclasses.replace(valid(), msg=b"", content_length=5)
    stranger = generate(KeyKind.CLUSTER)
    rejected(resigned(inv, stranger), "issuer")


# --- wash 0.x `call` -------------------------------------------------------------------


def wash_invocation(origin: WasmCloudEntity, host_id: str, target_pk: str) -> bytes:
    """An invocation shaped the way wash's RpcClient (weld rpc_client.rs) sends one.

    Dash-less uuid as id and subject, a wascap Claims<Invocation> (nuid jti, iat, iss,
    sub, wascap, wascap_revision; no exp), content_length Some(len), msgpack named map.
    """
    payload = msgpack.packb({"hello": "world"})  # json_str_to_msgpack_bytes('{"hello":"world"}')
    inv_id = uuid.uuid4().hex
    operation = "HandleOperation"
    target = WasmCloudEntity.actor(target_pk)
    origin_url, target_url = origin.url(), f"{target.url()}/{operation}"
    signed = origin_url.encode() + target_url.encode() + operation.encode() + payload
    claims = {
        "jti": secrets.token_urlsafe(16),
        "iat": int(NOW),
        "iss": CLUSTER.public_key,
        "sub": inv_id,
        "wascap": {
            "target_url": target_url,
            "origin_url": origin_url,
            "hash": hashlib.sha256(signed).hexdigest().upper(),
        },
        "wascap_revision": 3,
    }
    return msgpack.packb(
        {
            "origin": origin.to_wire(),
            "target": target.to_wire(),
            "operation": operation,
            "msg": payload,
            "id": inv_id,
            "encoded_claims": sign_token(claims, CLUSTER),
            "host_id": host_id,
            "content_length": len(payload),
            "traceContext": {},
        },
        use_bin_type=True,
    )


def test_legacy_wash_call_is_accepted() -> None:
    # wasmCloud/wash:src/call.rs: origin new_actor("__WASH__"), host id "Nwash…000"
    raw = wash_invocation(WasmCloudEntity.actor("__WASH__"), WASH_LEGACY_HOST_ID, ACTOR)
    inv = Invocation.decode(raw)
    assert inv.origin_url == "wasmbus:////__WASH__"
    check(inv)


def test_later_wash_call_is_accepted() -> None:
    # later wash-cli call.rs: the origin is the target actor itself, host id a valid N key
    raw = wash_invocation(WasmCloudEntity.actor(ACTOR), WASH_HOST_ID, ACTOR)
    check(Invocation.decode(raw))


def test_wash_call_for_another_actor_is_refused() -> None:
    raw = wash_invocation(WasmCloudEntity.actor("__WASH__"), WASH_LEGACY_HOST_ID, OTHER_ACTOR)
    rejected(Invocation.decode(raw), "target")
