"""wascap actor claims: read, verify and write the JWT embedded in a wasm module. Pure, no I/O.

Compatible with wasmCloud's wascap 0.11 and ``wash claims``: the JWT (header
``{"typ":"jwt","alg":"Ed25519"}``) lives in a custom section named ``wasmcloud_jwt`` (legacy
name ``jwt``) at the end of the module; its claims are ``jti``, ``iat``, ``iss`` (an account
key ``A…``), ``sub`` (the actor's module key ``M…``), optional ``exp``/``nbf``,
``wascap_revision`` and ``wascap = {name, hash, tags, caps, rev, ver, call_alias, prov}``.
``hash`` is the module hash of :func:`agent.runtime.module.module_hash`. wascap enforces it
only from revision 3 on, because wascap 0.9 hashed only parts of the module; we check it for
every revision. The standard computation matches the hash of every older module we know of
(wascap's echo_messaging at revision 2, logger without a revision), and a mismatch at an old
revision cannot be told apart from tampering, so it is refused (LegacyHashError) unless the
caller allows legacy claims or has pinned the module's exact bytes.

:func:`verify_claims` checks, in this order, each failure with its own error class: the
signature (SignatureError), the subject's key kind (ClaimsError), the issuer's key kind and
trust (UntrustedIssuerError), the time window (ClaimsExpiredError), the hash
(HashMismatchError; LegacyHashError below revision 3).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.errors import (
    ClaimsError,
    ClaimsExpiredError,
    HashMismatchError,
    IdentityError,
    JWTError,
    LegacyHashError,
    SignatureError,
    UnsignedModuleError,
    UntrustedIssuerError,
)
from agent.identity import jwt
from agent.identity.keys import KeyKind, KeyPair, decode_public_key, generate, verify_signature
from agent.runtime.module import (
    JWT_SECTION_NAMES,
    custom_sections,
    module_hash,
    strip_custom_sections,
)

__all__ = [
    "HASH_ENFORCED_REVISION",
    "SECTION_NAME",
    "WASCAP_HEADER",
    "WASCAP_REVISION",
    "ActorClaims",
    "VerifiedClaims",
    "claims_from_token",
    "embed_token",
    "extract_claims",
    "extract_token",
    "iso_time",
    "sign_module",
    "verify_claims",
]

SECTION_NAME = "wasmcloud_jwt"
WASCAP_HEADER = {"typ": "jwt", "alg": "Ed25519"}
WASCAP_REVISION = 3  # what we write (wascap >= 0.10.1)
HASH_ENFORCED_REVISION = 3  # wascap's MIN_WASCAP_INTERNAL_REVISION: below it, hashes may differ
_ACCEPTED_ALGS = {"ed25519", "ed25519-nkey"}
_DAY = 86_400


@dataclass(frozen=True, slots=True)
class ActorClaims:
    """The claims of a signed actor, as found in its JWT (not yet verified)."""

    issuer: str
    subject: str
    name: str | None
    caps: tuple[str, ...]
    tags: tuple[str, ...]
    rev: int | None
    ver: str | None
    call_alias: str | None
    wascap_revision: int  # 0 when the token has none (pre-0.9 signers)
    hash: str
    issued_at: int | None
    expires: int | None
    not_before: int | None
    jti: str | None
    token: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the claims (without the raw token)."""
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "name": self.name,
            "caps": list(self.caps),
            "tags": list(self.tags),
            "rev": self.rev,
            "ver": self.ver,
            "call_alias": self.call_alias,
            "wascap_revision": self.wascap_revision,
            "hash": self.hash,
            "issued_at": self.issued_at,
            "expires": self.expires,
            "not_before": self.not_before,
        }


@dataclass(frozen=True, slots=True)
class VerifiedClaims:
    """Claims that passed :func:`verify_claims`, with what the check learned on the way."""

    claims: ActorClaims
    module_hash: str
    hash_matches: bool
    warnings: tuple[str, ...] = ()


# --- reading -----------------------------------------------------------------------


def _opt_int(claims: dict[str, Any], key: str) -> int | None:
    value = claims.get(key)
    if value is None:
        return None
    # JSON allows 1e999 and NaN, which int() refuses: reject them as malformed claims
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClaimsError(f"malformed wascap claims: '{key}' is not a finite number")
    return int(value)


def _opt_str(claims: dict[str, Any], key: str) -> str | None:
    value = claims.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClaimsError(f"malformed wascap claims: '{key}' is not a string")
    return value


def _str_list(claims: dict[str, Any], key: str) -> tuple[str, ...]:
    value = claims.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClaimsError(f"malformed wascap claims: '{key}' is not a list of strings")
    return tuple(value)


def claims_from_token(token: str) -> ActorClaims:
    """Decode a wascap JWT without verifying it; ClaimsError when it is not actor claims."""
    try:
        decoded = jwt.decode(token)
    except JWTError as exc:
        raise ClaimsError(f"the embedded wascap JWT is malformed: {exc}") from exc
    except RecursionError:  # json gives up on absurdly nested input; it is still just bad input
        raise ClaimsError("the embedded wascap JWT is nested too deeply to decode") from None
    body = decoded.claims
    wascap = body.get("wascap")
    if not isinstance(wascap, dict):
        raise ClaimsError("the embedded JWT has no 'wascap' claims: not an actor's token")
    if wascap.get("prov") is True:
        raise ClaimsError("the embedded JWT holds capability provider claims, not actor claims")
    claimed_hash = _opt_str(wascap, "hash")
    if not claimed_hash:
        raise ClaimsError("malformed wascap claims: no module 'hash'")
    return ActorClaims(
        issuer=_opt_str(body, "iss") or "",
        subject=_opt_str(body, "sub") or "",
        name=_opt_str(wascap, "name"),
        caps=_str_list(wascap, "caps"),
        tags=_str_list(wascap, "tags"),
        rev=_opt_int(wascap, "rev"),
        ver=_opt_str(wascap, "ver"),
        call_alias=_opt_str(wascap, "call_alias"),
        wascap_revision=_opt_int(body, "wascap_revision") or 0,
        hash=claimed_hash,
        issued_at=_opt_int(body, "iat"),
        expires=_opt_int(body, "exp"),
        not_before=_opt_int(body, "nbf"),
        jti=_opt_str(body, "jti"),
        token=token,
    )


def extract_token(module_bytes: bytes) -> str | None:
    """The JWT in the module's ``wasmcloud_jwt`` (or legacy ``jwt``) section, or None."""
    tokens = [t for n in sorted(JWT_SECTION_NAMES) for t in custom_sections(module_bytes, n)]
    if not tokens:
        return None
    if len(tokens) > 1:
        # wascap writes exactly one; a second one could only be there to confuse a reader
        raise ClaimsError(f"the module carries {len(tokens)} JWT sections; expected one")
    try:
        return tokens[0].decode("ascii").strip()
    except UnicodeDecodeError:
        raise ClaimsError("the module's JWT section is not ASCII text") from None


def extract_claims(module_bytes: bytes) -> ActorClaims | None:
    """The module's claims (unverified), or None when it is unsigned."""
    token = extract_token(module_bytes)
    return None if token is None else claims_from_token(token)


# --- verifying -----------------------------------------------------------------------


def iso_time(seconds: int) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC; raw seconds when out of datetime's range."""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{seconds} seconds after the epoch"


def verify_claims(
    module_bytes: bytes,
    *,
    trusted_issuers: Collection[str],
    allow_unsigned: bool = False,
    allow_legacy_claims: bool = False,
    pinned: bool = False,
    now: float | None = None,
) -> VerifiedClaims | None:
    """Check a module's wascap claims; None for an unsigned module that may run unsigned.

    An empty ``trusted_issuers`` trusts nobody. The module hash must match the claims at
    every revision; below revision 3 a mismatch raises LegacyHashError unless
    ``allow_legacy_claims`` (admitted with a warning saying what is not checked).

    ``pinned`` says the caller trusts these exact bytes (their SHA-256 is pinned, see
    :func:`agent.runtime.admission.admit`): the module may then be unsigned, its issuer
    need not be trusted, and a legacy hash mismatch is admitted with a warning. The
    signature, the key kinds, the time window and a revision >= 3 hash are still checked:
    the claims still decide the actor's identity and capabilities, and claims that do not
    verify, contradict the code they came with or have run out are not ones to grant.
    """
    claims = extract_claims(module_bytes)
    if claims is None:
        if allow_unsigned or pinned:
            return None
        raise UnsignedModuleError(
            "the module is not signed (no wasmcloud_jwt or jwt section) and unsigned actors "
            "are not allowed; sign it with 'lattice-edge actor sign' using a trusted account key"
        )
    decoded = jwt.decode(claims.token)  # cannot fail: claims_from_token decoded it
    alg = str(decoded.header.get("alg", ""))
    if alg.lower() not in _ACCEPTED_ALGS:
        raise SignatureError(f"the wascap JWT uses algorithm '{alg}', expected Ed25519")
    try:
        decode_public_key(claims.issuer)
    except IdentityError as exc:
        raise SignatureError(
            f"the wascap JWT's issuer '{claims.issuer}' is not a key: {exc}"
        ) from exc
    if not verify_signature(claims.issuer, decoded.signing_input, decoded.signature):
        raise SignatureError(
            f"the wascap JWT's signature does not verify against its issuer {claims.issuer}"
        )
    try:
        decode_public_key(claims.subject, KeyKind.MODULE)
    except IdentityError as exc:
        raise ClaimsError(f"the claims' subject is not a module (M…) key: {exc}") from exc
    kind, _ = decode_public_key(claims.issuer)
    if kind is not KeyKind.ACCOUNT:
        raise UntrustedIssuerError(
            f"issuer {claims.issuer} is a {kind.name.lower()} key; actors must be signed by "
            "an account (A…) key"
        )
    warnings: list[str] = []
    if claims.issuer not in trusted_issuers:
        if not pinned:
            raise UntrustedIssuerError(
                f"issuer {claims.issuer} is not in trusted_issuers; trust it with "
                f"'lattice-edge trust add {claims.issuer}'",
                issuer=claims.issuer,
            )
        warnings.append(
            f"issuer {claims.issuer} is not trusted; admitted because the module's digest is pinned"
        )
    moment = time.time() if now is None else now
    if claims.expires and moment > claims.expires:
        raise ClaimsExpiredError(f"the actor's claims expired at {iso_time(claims.expires)}")
    if claims.not_before and moment < claims.not_before:
        raise ClaimsExpiredError(
            f"the actor's claims are not valid before {iso_time(claims.not_before)}"
        )
    actual = module_hash(module_bytes)
    matches = actual == claims.hash.upper()
    if not matches:
        warnings.append(_check_mismatch(module_bytes, claims, actual, allow_legacy_claims, pinned))
    return VerifiedClaims(claims, actual, matches, tuple(warnings))


def _shown(text: str, limit: int = 80) -> str:
    """``text`` from a module, safe to put in a message: control characters escaped, capped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("…" if len(text) > limit else "")


def _check_mismatch(
    module_bytes: bytes, claims: ActorClaims, actual: str, allow_legacy: bool, pinned: bool
) -> str:
    """The warning for a hash mismatch that may be admitted; raises when it may not."""
    revision = claims.wascap_revision
    claimed = _shown(claims.hash)
    if revision >= HASH_ENFORCED_REVISION:
        raise HashMismatchError(
            f"the module hash {actual} does not match the hash {claimed} in its "
            "claims: the module was changed after it was signed"
        )
    if pinned:
        return (
            f"module hash {actual} differs from {claimed} in its wascap_revision "
            f"{revision} claims; admitted because the module's digest is pinned"
        )
    if allow_legacy:
        return (
            f"UNVERIFIED CODE: module hash {actual} differs from {claimed} in its "
            f"wascap_revision {revision} claims, and the module runs only because legacy "
            f"claims are allowed: nothing ties this code to issuer {claims.issuer}, whose "
            f"signature still grants it the identity {claims.subject} and the capabilities "
            f"[{', '.join(_shown(c) for c in claims.caps)}]; anyone able to change the file "
            "can change what runs with them. Pin its digest or re-sign it at revision 3 instead"
        )
    digest = hashlib.sha256(module_bytes).hexdigest()
    raise LegacyHashError(
        f"the module hash {actual} does not match the hash {claimed} in its "
        f"wascap_revision {revision} claims: either the module was changed after it was "
        "signed or an old signer (wascap before 0.10.1) hashed it differently, and the two "
        "cannot be told apart. Re-sign it (lattice-edge actor sign), pin its digest "
        f"sha256:{digest} ([actors] pinned_modules), or run it unverified with "
        "[actors] allow_legacy_claims = true"
    )


# --- signing -----------------------------------------------------------------------


def _custom_section(name: str, payload: bytes) -> bytes:
    body = _leb(len(name.encode())) + name.encode() + payload
    return b"\x00" + _leb(len(body)) + body


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def embed_token(module_bytes: bytes, token: str) -> bytes:
    """The module without its JWT sections, with ``token`` appended as ``wasmcloud_jwt``."""
    return strip_custom_sections(module_bytes) + _custom_section(SECTION_NAME, token.encode())


def sign_module(
    module_bytes: bytes,
    issuer: KeyPair,
    name: str,
    caps: Sequence[str] = (),
    tags: Sequence[str] = (),
    rev: int | None = None,
    ver: str | None = None,
    call_alias: str | None = None,
    module_key: KeyPair | None = None,
    expires_in_days: int | None = None,
    *,
    now: float | None = None,
) -> tuple[bytes, ActorClaims]:
    """Sign an actor as ``wash claims sign`` does; returns (signed module, its claims).

    Existing JWT sections are replaced. ``module_key`` is the actor's identity (its
    subject); a fresh one is generated when None, so pass the same key to keep an actor's
    identity across releases. The output is deterministic for fixed keys and ``now``.
    """
    if issuer.kind is not KeyKind.ACCOUNT:
        raise IdentityError(
            f"actors are signed with an account key, not a {issuer.kind.name.lower()} key"
        )
    subject = module_key if module_key is not None else generate(KeyKind.MODULE)
    if subject.kind is not KeyKind.MODULE:
        raise IdentityError(
            f"an actor's subject must be a module key, not a {subject.kind.name.lower()} key"
        )
    stripped = strip_custom_sections(module_bytes)
    issued = int(time.time() if now is None else now)
    wascap: dict[str, Any] = {"name": name, "hash": module_hash(stripped)}
    wascap["tags"] = list(tags)
    wascap["caps"] = list(caps)
    if rev is not None:
        wascap["rev"] = rev
    if ver is not None:
        wascap["ver"] = ver
    if call_alias is not None:
        wascap["call_alias"] = call_alias
    wascap["prov"] = False
    body: dict[str, Any] = {"iat": issued, "iss": issuer.public_key, "sub": subject.public_key}
    if expires_in_days is not None:
        body["exp"] = issued + expires_in_days * _DAY
    body["wascap"] = wascap
    body["wascap_revision"] = WASCAP_REVISION
    token = jwt.encode(body, issuer, header=WASCAP_HEADER)
    return embed_token(stripped, token), claims_from_token(token)
