"""Admission of legacy claims and pinned digests (issue 7, finding 5).

A wascap revision < 3 module whose code was patched after signing used to be admitted with
a warning nobody reads; now its hash is checked with the standard computation, and a
mismatch runs only when its exact bytes are pinned or legacy claims are allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Collection
from pathlib import Path

import pytest
from _wasmgen import DEMO_WASM, GUESTS

from agent.errors import (
    HashMismatchError,
    LegacyHashError,
    ModuleError,
    SignatureError,
    UnsignedModuleError,
    UntrustedIssuerError,
)
from agent.identity import jwt
from agent.identity.keys import KeyKind, KeyPair, generate
from agent.identity.wascap import WASCAP_HEADER, embed_token, extract_token, sign_module
from agent.runtime.admission import AdmittedModule, admit, inspect_report, parse_digest
from agent.runtime.demo import DEMO_ISSUER, demo_actor_bytes
from agent.runtime.module import iter_sections, module_hash, parse_module, strip_custom_sections

ECHO_FILE = "echo_messaging_v0.9.0.wasm"
ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"
NOW = 1_800_000_000


def plain_guest() -> bytes:
    return strip_custom_sections((GUESTS / "echo.wasm").read_bytes())


def sign_at_revision(code: bytes, issuer: KeyPair, revision: int) -> bytes:
    """``code`` signed by ``issuer`` as a wascap < 0.10.1 signer would (revision < 3)."""
    body = {
        "iat": NOW, "iss": issuer.public_key, "sub": generate(KeyKind.MODULE).public_key,
        "wascap_revision": revision,
        "wascap": {"name": "legacy", "hash": module_hash(code),
                   "caps": ["wasmcloud:builtin:logging"], "prov": False},
    }  # fmt: skip
    return embed_token(code, jwt.encode(body, issuer, header=WASCAP_HEADER))


def patch_code(module: bytes) -> bytes:
    """``module`` with one byte of its code section changed (its claims untouched).

    The byte is picked, from the end of the section, as the first whose change still
    parses to what wasm3 can run: admission checks that before the claims.
    """
    code = next(s for s in iter_sections(module) if s.id == 10)
    for offset in range(code.end - 1, code.payload, -1):
        data = bytearray(module)
        data[offset] ^= 0x01
        with contextlib.suppress(ModuleError):
            if not parse_module(bytes(data)).unsupported:
                return bytes(data)
    raise AssertionError("no code byte can be changed without breaking the module")


def echo_fixture(folder: Path) -> bytes:
    path = folder / ECHO_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path.read_bytes()


def admit_with(
    data: bytes,
    trusted: Collection[str],
    *,
    allow_legacy_claims: bool = False,
    pinned_digests: Collection[str] = (),
) -> AdmittedModule:
    return admit(
        data, trusted_issuers=trusted, allow_unsigned=False, max_pages=32, now=NOW,
        allow_legacy_claims=allow_legacy_claims, pinned_digests=pinned_digests,
    )  # fmt: skip


# --- the regression ----------------------------------------------------------------------


def test_patched_revision_2_module_from_a_trusted_issuer_is_refused() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed = sign_at_revision(plain_guest(), issuer, 2)
    assert admit_with(signed, {issuer.public_key})  # as signed: admitted
    tampered = patch_code(signed)
    with pytest.raises(HashMismatchError) as raised:
        admit_with(tampered, {issuer.public_key})
    assert type(raised.value) is LegacyHashError
    assert f"sha256:{hashlib.sha256(tampered).hexdigest()}" in str(raised.value)


def test_patched_third_party_revision_2_module_is_refused(third_party_dir: Path) -> None:
    tampered = patch_code(echo_fixture(third_party_dir))
    with pytest.raises(LegacyHashError):
        admit_with(tampered, {ECHO_ISSUER})
    report = inspect_report(
        tampered, trusted_issuers={ECHO_ISSUER}, allow_unsigned=False, max_pages=32, now=NOW
    )
    assert report["hash_matches"] is False and report["pinned"] is False
    assert report["verdict"]["accepted"] is False
    assert report["verdict"]["error"] == "LegacyHashError"


def test_third_party_revision_2_module_is_still_admitted(third_party_dir: Path) -> None:
    data = echo_fixture(third_party_dir)
    admitted = admit(data, trusted_issuers={ECHO_ISSUER}, allow_unsigned=False, max_pages=32)
    assert admitted.claims is not None and admitted.claims.wascap_revision == 2
    assert admitted.module_hash == admitted.claims.hash  # the standard computation matches
    assert not any("hash" in w for w in admitted.warnings)
    assert not admitted.pinned and admitted.sha256 == hashlib.sha256(data).hexdigest()


# --- the ways to run an unverifiable module ------------------------------------------------


def test_allow_legacy_claims_admits_a_mismatch_and_says_so_loudly(third_party_dir: Path) -> None:
    tampered = patch_code(echo_fixture(third_party_dir))
    admitted = admit_with(tampered, {ECHO_ISSUER}, allow_legacy_claims=True)
    (loud,) = [w for w in admitted.warnings if "UNVERIFIED CODE" in w]
    assert "legacy claims are allowed" in loud and ECHO_ISSUER in loud
    assert "wasmcloud:messaging" in loud  # what the unverified code is granted
    # it is about legacy hashes only: a revision 3 mismatch is still refused
    issuer = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(plain_guest(), issuer, "rev3", now=NOW)
    with pytest.raises(HashMismatchError) as raised:
        admit_with(patch_code(signed), {issuer.public_key}, allow_legacy_claims=True)
    assert type(raised.value) is HashMismatchError


def test_pinned_digest_admits_a_module_from_an_untrusted_issuer() -> None:
    stranger = generate(KeyKind.ACCOUNT)
    signed, claims = sign_module(plain_guest(), stranger, "pinned", now=NOW)
    with pytest.raises(UntrustedIssuerError):
        admit_with(signed, {DEMO_ISSUER})
    digest = hashlib.sha256(signed).hexdigest()
    for pin in (digest, digest.upper(), f"sha256:{digest}"):
        admitted = admit_with(signed, {DEMO_ISSUER}, pinned_digests=[pin])
        assert admitted.pinned and admitted.actor_id == claims.subject
        assert any("not trusted" in w for w in admitted.warnings)
    # the pin is for those bytes only
    with pytest.raises(UntrustedIssuerError):
        admit_with(patch_code(signed), {DEMO_ISSUER}, pinned_digests=[digest])
    other, _ = sign_module(plain_guest(), stranger, "other", now=NOW)
    with pytest.raises(UntrustedIssuerError):
        admit_with(other, {DEMO_ISSUER}, pinned_digests=[digest])


def test_pinned_digest_admits_an_unsigned_module_and_an_unverifiable_one() -> None:
    unsigned = plain_guest()
    with pytest.raises(UnsignedModuleError):
        admit_with(unsigned, set())
    admitted = admit_with(unsigned, set(), pinned_digests=[hashlib.sha256(unsigned).hexdigest()])
    assert admitted.claims is None
    assert "admitted because its digest is pinned" in admitted.warnings[0]
    tampered = patch_code(sign_at_revision(plain_guest(), generate(KeyKind.ACCOUNT), 1))
    admitted = admit_with(tampered, set(), pinned_digests=[hashlib.sha256(tampered).hexdigest()])
    assert admitted.pinned


def test_pinned_digest_does_not_excuse_a_forged_signature() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(plain_guest(), issuer, "forged", now=NOW)
    head, body, sig = (extract_token(signed) or "").split(".")
    forged = embed_token(
        signed, f"{head}.{body}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
    )
    with pytest.raises(SignatureError):
        admit_with(forged, set(), pinned_digests=[hashlib.sha256(forged).hexdigest()])


def test_inspect_report_shows_the_pin() -> None:
    stranger = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(plain_guest(), stranger, "pinned", now=NOW)
    report = inspect_report(
        signed, trusted_issuers=(), allow_unsigned=False, max_pages=8, now=NOW,
        pinned_digests=[hashlib.sha256(signed).hexdigest()],
    )  # fmt: skip
    assert report["pinned"] is True and report["verdict"]["accepted"] is True
    assert any("pinned" in w for w in report["warnings"])


@pytest.mark.parametrize(
    "text", ["", "abc", "sha256:", "g" * 64, "a" * 63, "a" * 65, "md5:" + "a" * 64]
)
def test_malformed_digests_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a SHA-256 digest"):
        parse_digest(text)


def test_the_demo_actor_runs_pinned_with_no_issuer_trusted() -> None:
    data = demo_actor_bytes()
    assert DEMO_WASM.read_bytes() == data
    with pytest.raises(UntrustedIssuerError):
        admit_with(data, set())
    admitted = admit_with(data, set(), pinned_digests=pinned_modules_of(data))
    assert admitted.pinned and admitted.claims is not None
    assert admitted.claims.issuer == DEMO_ISSUER


def pinned_modules_of(data: bytes) -> list[str]:
    return [f"sha256:{hashlib.sha256(data).hexdigest()}"]
