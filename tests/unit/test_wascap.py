"""agent.identity.wascap: reading, verifying and signing actor claims."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from _wasmgen import DEMO_WASM, GUESTS, custom

from agent.errors import (
    ClaimsError,
    ClaimsExpiredError,
    HashMismatchError,
    IdentityError,
    LegacyHashError,
    SignatureError,
    UnsignedModuleError,
    UntrustedIssuerError,
)
from agent.identity import jwt
from agent.identity.keys import KeyKind, KeyPair, generate, load_seed_file
from agent.identity.wascap import (
    WASCAP_HEADER,
    embed_token,
    extract_claims,
    extract_token,
    sign_module,
    verify_claims,
)
from agent.runtime.demo import DEMO_ISSUER
from agent.runtime.module import iter_sections, module_hash, strip_custom_sections

ECHO = {
    "file": "echo_messaging_v0.9.0.wasm",
    "iss": "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB",
    "sub": "MDJ5BWS6JXSWOZL2ZENW2D4FBSHQ5ZMFGEGJB33TLKYKMXTLLAXINU36",
    "caps": ("wasmcloud:messaging", "wasmcloud:builtin:logging"),
    "revision": 2,
    "hash": "0A116480EF09116D59E441A125EF472E362B6F2AE0938E4D33A964C349BE13C7",
    "name": "Echo Messaging",
    "ver": "0.1.5",
}
LOGGER = {
    "file": "logger.wasm",
    "iss": "ACOJJN6WUP4ODD75XEBKKTCCUJJCY5ZKQ56XVKYK4BEJWGVAOOQHZMCW",
    "sub": "MAARQX72EAZ4T4ODYOQZED3FJ6P27KWWVVTUNV6TVX2VBRVVSUKLAQHP",
    "caps": ("wasmcloud:httpserver", "wasmcloud:logging"),
    "revision": 0,  # the token has no wascap_revision
    "hash": "7941152C0674229576BBF50D880DF71C0A579FEF9ECEDC5069AC1009D33E81F1",
    "name": "Logger",
    "ver": "0.1.0",
}
NOW = 1_800_000_000


def plain_guest() -> bytes:
    """Our echo guest without its signature."""
    return strip_custom_sections((GUESTS / "echo.wasm").read_bytes())


def fixture(folder: Path, expected: dict[str, Any]) -> bytes:
    path = folder / str(expected["file"])
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path.read_bytes()


@pytest.mark.parametrize("expected", [ECHO, LOGGER], ids=["echo_messaging", "logger"])
def test_signed_fixtures_verify(third_party_dir: Path, expected: dict[str, Any]) -> None:
    data = fixture(third_party_dir, expected)
    result = verify_claims(data, trusted_issuers={expected["iss"]}, now=NOW)
    assert result is not None
    claims = result.claims
    assert claims.issuer == expected["iss"]
    assert claims.subject == expected["sub"]
    assert claims.caps == expected["caps"]
    assert claims.hash == expected["hash"]
    assert claims.wascap_revision == expected["revision"]
    assert (claims.name, claims.ver) == (expected["name"], expected["ver"])
    assert result.module_hash == expected["hash"] and result.hash_matches
    assert result.warnings == ()


def test_untrusted_issuer_is_named(third_party_dir: Path) -> None:
    data = fixture(third_party_dir, ECHO)
    with pytest.raises(UntrustedIssuerError, match=ECHO["iss"]):
        verify_claims(data, trusted_issuers={LOGGER["iss"]}, now=NOW)
    with pytest.raises(UntrustedIssuerError):
        verify_claims(data, trusted_issuers=(), now=NOW)  # an empty list trusts nobody


def _patched_echo(folder: Path) -> bytes:
    data = bytearray(fixture(folder, ECHO))
    code = next(s for s in iter_sections(bytes(data)) if s.id == 10)
    data[code.payload + 100] ^= 0xFF
    return bytes(data)


def test_old_revision_hash_mismatch_is_refused(third_party_dir: Path) -> None:
    data = _patched_echo(third_party_dir)
    with pytest.raises(LegacyHashError) as raised:
        verify_claims(data, trusted_issuers={ECHO["iss"]}, now=NOW)
    assert isinstance(raised.value, HashMismatchError)
    message = str(raised.value)
    assert "wascap_revision 2" in message and ECHO["hash"] in message
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" in message  # what to pin
    assert "allow_legacy_claims" in message


def test_old_revision_hash_mismatch_with_legacy_claims_allowed(third_party_dir: Path) -> None:
    data = _patched_echo(third_party_dir)
    result = verify_claims(data, trusted_issuers={ECHO["iss"]}, allow_legacy_claims=True, now=NOW)
    assert result is not None and not result.hash_matches
    (warning,) = result.warnings
    assert warning.startswith("UNVERIFIED CODE") and "wascap_revision 2" in warning
    assert ECHO["iss"] in warning and "wasmcloud:messaging" in warning
    # allowing legacy claims does not stretch to trust or to revision 3
    with pytest.raises(UntrustedIssuerError):
        verify_claims(data, trusted_issuers=(), allow_legacy_claims=True, now=NOW)


def test_pinned_module_skips_trust_and_the_legacy_hash(third_party_dir: Path) -> None:
    data = _patched_echo(third_party_dir)
    result = verify_claims(data, trusted_issuers=(), pinned=True, now=NOW)
    assert result is not None and result.claims.subject == ECHO["sub"]
    assert [w.split(";")[0] for w in result.warnings] == [
        f"issuer {ECHO['iss']} is not trusted",
        f"module hash {module_hash(data)} differs from {ECHO['hash']} in its wascap_revision 2 "
        "claims",
    ]
    assert verify_claims(plain_guest(), trusted_issuers=(), pinned=True) is None  # unsigned


def test_pinned_module_still_needs_claims_that_hold() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(plain_guest(), issuer, "pinned", expires_in_days=1, now=NOW)
    with pytest.raises(ClaimsExpiredError):
        verify_claims(signed, trusted_issuers=(), pinned=True, now=NOW + 2 * 86_400)
    token = extract_token(signed) or ""
    head, body, sig = token.split(".")
    forged = embed_token(
        signed, f"{head}.{body}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
    )
    with pytest.raises(SignatureError):
        verify_claims(forged, trusted_issuers=(), pinned=True, now=NOW)
    patched = bytearray(signed)
    code = next(s for s in iter_sections(signed) if s.id == 10)
    patched[code.end - 2] ^= 0x01
    with pytest.raises(HashMismatchError):  # revision 3: the claims contradict the code
        verify_claims(bytes(patched), trusted_issuers=(), pinned=True, now=NOW)


def legacy_signed(code: bytes, issuer: KeyPair, revision: int) -> bytes:
    """``code`` signed as a pre-revision-3 signer would (our signer writes revision 3)."""
    body = {
        "iat": NOW, "iss": issuer.public_key, "sub": generate(KeyKind.MODULE).public_key,
        "wascap_revision": revision,
        "wascap": {"name": "legacy", "hash": module_hash(code), "caps": [], "prov": False},
    }  # fmt: skip
    if revision == 0:
        del body["wascap_revision"]
    return embed_token(code, jwt.encode(body, issuer, header=WASCAP_HEADER))


@pytest.mark.parametrize("revision", [0, 1, 2])
def test_patched_legacy_module_from_a_trusted_issuer_is_refused(revision: int) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed = legacy_signed(plain_guest(), issuer, revision)
    result = verify_claims(signed, trusted_issuers={issuer.public_key}, now=NOW)
    assert result is not None and result.hash_matches and result.warnings == ()
    patched = bytearray(signed)
    code = next(s for s in iter_sections(signed) if s.id == 10)
    patched[code.end - 2] ^= 0x01
    with pytest.raises(LegacyHashError, match=f"wascap_revision {revision} claims"):
        verify_claims(bytes(patched), trusted_issuers={issuer.public_key}, now=NOW)


def test_hostile_claimed_hash_is_escaped_in_the_error() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    body = {
        "iat": NOW, "iss": issuer.public_key, "sub": generate(KeyKind.MODULE).public_key,
        "wascap_revision": 2, "wascap": {"hash": "AB\nCRITICAL forged\x1b[31m" + "X" * 500},
    }  # fmt: skip
    data = embed_token(plain_guest(), jwt.encode(body, issuer, header=WASCAP_HEADER))
    with pytest.raises(LegacyHashError) as raised:
        verify_claims(data, trusted_issuers={issuer.public_key}, now=NOW)
    message = str(raised.value)
    assert "\n" not in message and "\x1b" not in message and "XXXXX…" in message


def test_bad_signature(third_party_dir: Path) -> None:
    data = fixture(third_party_dir, ECHO)
    token = extract_token(data)
    assert token is not None
    head, body, sig = token.split(".")
    forged = f"{head}.{body}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_claims(embed_token(data, forged), trusted_issuers={ECHO["iss"]}, now=NOW)


def test_tampered_claims_fail_the_signature_before_trust(third_party_dir: Path) -> None:
    data = fixture(third_party_dir, ECHO)
    decoded = jwt.decode(extract_token(data) or "")
    claims = dict(decoded.claims)
    claims["wascap"] = {**claims["wascap"], "caps": ["wasmcloud:httpserver"]}
    head, _, sig = (extract_token(data) or "").split(".")
    body = jwt.b64url_encode(json.dumps(claims).encode())
    # untrusted AND forged: the signature is checked first
    with pytest.raises(SignatureError):
        verify_claims(embed_token(data, f"{head}.{body}.{sig}"), trusted_issuers=(), now=NOW)


def test_sign_then_verify_round_trip() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    actor = generate(KeyKind.MODULE)
    signed, claims = sign_module(
        plain_guest(), issuer, "round trip", ["wasmcloud:builtin:logging"], ["demo"], 4,
        "1.2.3", "echoer", actor, 30, now=NOW,
    )  # fmt: skip
    result = verify_claims(signed, trusted_issuers={issuer.public_key}, now=NOW + 60)
    assert result is not None and result.claims == claims
    assert claims.issuer == issuer.public_key and claims.subject == actor.public_key
    assert claims.caps == ("wasmcloud:builtin:logging",) and claims.tags == ("demo",)
    assert (claims.rev, claims.ver, claims.call_alias) == (4, "1.2.3", "echoer")
    assert claims.wascap_revision == 3
    assert claims.expires == NOW + 30 * 86_400 and claims.issued_at == NOW
    assert claims.hash == module_hash(plain_guest()) == result.module_hash
    # wascap layout: one wasmcloud_jwt section, appended last, Ed25519 header
    assert iter_sections(signed)[-1].name == "wasmcloud_jwt"
    assert signed.startswith(plain_guest())
    decoded = jwt.decode(claims.token)
    assert decoded.header == WASCAP_HEADER
    assert set(decoded.claims) == {"jti", "iat", "iss", "sub", "exp", "wascap", "wascap_revision"}
    assert decoded.claims["wascap"]["prov"] is False


def test_resigning_replaces_the_old_section() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    once, _ = sign_module(plain_guest(), issuer, "a", now=NOW)
    twice, claims = sign_module(once, issuer, "b", now=NOW)
    assert [s.name for s in iter_sections(twice) if s.id == 0] == ["wasmcloud_jwt"]
    assert extract_claims(twice) == claims and claims.name == "b"


def test_generated_module_key_when_none_given() -> None:
    _, claims = sign_module(plain_guest(), generate(KeyKind.ACCOUNT), "x", now=NOW)
    assert claims.subject.startswith("M")


def test_flipped_code_byte_in_revision_3_module_is_a_hash_mismatch() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed, claims = sign_module(plain_guest(), issuer, "victim", now=NOW)
    data = bytearray(signed)
    code = next(s for s in iter_sections(signed) if s.id == 10)
    data[code.end - 2] ^= 0x01
    actual = module_hash(bytes(data))
    with pytest.raises(HashMismatchError) as raised:
        verify_claims(bytes(data), trusted_issuers={issuer.public_key}, now=NOW)
    assert actual in str(raised.value) and claims.hash in str(raised.value)


def test_expired_and_not_yet_valid() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(plain_guest(), issuer, "short", expires_in_days=1, now=NOW)
    with pytest.raises(ClaimsExpiredError, match="expired at"):
        verify_claims(signed, trusted_issuers={issuer.public_key}, now=NOW + 2 * 86_400)
    body = {
        "iat": NOW, "iss": issuer.public_key, "sub": generate(KeyKind.MODULE).public_key,
        "nbf": NOW + 3600, "wascap_revision": 3,
        "wascap": {"name": "later", "hash": module_hash(plain_guest()), "prov": False},
    }  # fmt: skip
    future = embed_token(plain_guest(), jwt.encode(body, issuer, header=WASCAP_HEADER))
    with pytest.raises(ClaimsExpiredError, match="not valid before"):
        verify_claims(future, trusted_issuers={issuer.public_key}, now=NOW)
    assert verify_claims(future, trusted_issuers={issuer.public_key}, now=NOW + 7200)


def test_unsigned_module() -> None:
    with pytest.raises(UnsignedModuleError, match="not signed"):
        verify_claims(plain_guest(), trusted_issuers={DEMO_ISSUER})
    assert verify_claims(plain_guest(), trusted_issuers=(), allow_unsigned=True) is None


def test_subject_must_be_a_module_key() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    body = {
        "iat": NOW, "iss": issuer.public_key, "sub": generate(KeyKind.USER).public_key,
        "wascap": {"hash": module_hash(plain_guest())}, "wascap_revision": 3,
    }  # fmt: skip
    data = embed_token(plain_guest(), jwt.encode(body, issuer, header=WASCAP_HEADER))
    with pytest.raises(ClaimsError, match="subject is not a module") as raised:
        verify_claims(data, trusted_issuers={issuer.public_key}, now=NOW)
    assert type(raised.value) is ClaimsError


def test_issuer_must_be_an_account_key() -> None:
    operator = generate(KeyKind.OPERATOR)
    body = {
        "iat": NOW, "iss": operator.public_key, "sub": generate(KeyKind.MODULE).public_key,
        "wascap": {"hash": module_hash(plain_guest())}, "wascap_revision": 3,
    }  # fmt: skip
    data = embed_token(plain_guest(), jwt.encode(body, operator, header=WASCAP_HEADER))
    with pytest.raises(UntrustedIssuerError, match="operator key"):
        verify_claims(data, trusted_issuers={operator.public_key}, now=NOW)
    with pytest.raises(IdentityError, match="account key"):
        sign_module(plain_guest(), operator, "x")


def test_legacy_jwt_section_name_and_duplicates() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed, claims = sign_module(plain_guest(), issuer, "legacy", now=NOW)
    legacy = plain_guest() + custom("jwt", claims.token.encode())
    assert extract_claims(legacy) == claims
    assert verify_claims(legacy, trusted_issuers={issuer.public_key}, now=NOW)
    with pytest.raises(ClaimsError, match="2 JWT sections"):
        extract_claims(signed + custom("jwt", claims.token.encode()))


@pytest.mark.parametrize("payload", [b"not a jwt", b"a.b.c", b"\xff\xfe", b""])
def test_malformed_tokens_are_claims_errors(payload: bytes) -> None:
    with pytest.raises(ClaimsError):
        extract_claims(plain_guest() + custom("wasmcloud_jwt", payload))


def test_provider_claims_are_not_actor_claims() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    body = {"sub": generate(KeyKind.MODULE).public_key, "wascap": {"hash": "X", "prov": True}}
    data = embed_token(plain_guest(), jwt.encode(body, issuer, header=WASCAP_HEADER))
    with pytest.raises(ClaimsError, match="provider"):
        extract_claims(data)


def test_demo_actor_is_signed_by_the_committed_demo_issuer() -> None:
    seed_file = Path(__file__).resolve().parents[1] / "fixtures" / "demo_issuer.nk"
    assert load_seed_file(seed_file, KeyKind.ACCOUNT).public_key == DEMO_ISSUER
    result = verify_claims(DEMO_WASM.read_bytes(), trusted_issuers={DEMO_ISSUER})
    assert result is not None and result.hash_matches
    assert result.claims.wascap_revision == 3
    assert "wasmcloud:builtin:numbergen" in result.claims.caps


@pytest.mark.parametrize(
    "claims_json",
    [
        b'{"iss":"A","sub":"M","exp":1e999,"wascap":{"hash":"X"}}',  # JSON inf
        b'{"iss":"A","sub":"M","iat":NaN,"wascap":{"hash":"X"}}',
        b"[" * 50_000 + b"]" * 50_000,  # nesting json cannot decode
    ],
)
def test_hostile_claims_json_is_a_claims_error(claims_json: bytes) -> None:
    token = f"{jwt.b64url_encode(b'{}')}.{jwt.b64url_encode(claims_json)}.AA"
    with pytest.raises(ClaimsError):
        extract_claims(plain_guest() + custom("wasmcloud_jwt", token.encode()))


def test_far_future_not_before_is_reported_not_crashed() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    body = {
        "iat": 10**15, "iss": issuer.public_key, "sub": generate(KeyKind.MODULE).public_key,
        "nbf": 10**18, "wascap": {"hash": module_hash(plain_guest())}, "wascap_revision": 3,
    }  # fmt: skip
    data = embed_token(plain_guest(), jwt.encode(body, issuer, header=WASCAP_HEADER))
    with pytest.raises(ClaimsExpiredError, match="not valid before"):
        verify_claims(data, trusted_issuers={issuer.public_key}, now=NOW)
