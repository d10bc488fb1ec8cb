"""NATS decentralized-auth JWTs (operator, account, user) and ``.creds`` files.

The wire format follows nats-io/jwt v2: header ``{"typ":"JWT","alg":"ed25519-nkey"}``,
base64url segments without padding, an Ed25519 signature by the issuer over
``header.payload``, and the role-specific claims under ``nats``. ``jti`` is the base32
SHA-512/256 of the claims, as the Go library computes it (the server does not check it).

:func:`decode` and :func:`verify` also accept wascap's ``{"typ":"jwt","alg":"Ed25519"}``
header, so actor claims share this codec. Pure functions, no I/O except the ``.creds``
helpers at the bottom.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import CredsError, IdentityError, JWTError
from agent.fsutil import write_secret
from agent.identity.keys import KeyKind, KeyPair, decode_public_key, verify_signature

__all__ = [
    "Creds",
    "DecodedJWT",
    "account_claims",
    "amend_account",
    "decode",
    "encode",
    "format_creds",
    "operator_claims",
    "parse_creds",
    "read_creds",
    "scoped_user_claims",
    "user_claims",
    "user_scope",
    "verify",
    "write_creds",
]

NATS_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_ACCEPTED_ALGS = {"ed25519-nkey", "ed25519"}
UNLIMITED = -1


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as JWT segments are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; tolerant of missing padding."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JWTError("a JWT segment is not base64url") from exc


@dataclass(frozen=True, slots=True)
class DecodedJWT:
    """A JWT split into its parts; ``claims`` is the decoded payload."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def issuer(self) -> str:
        """The ``iss`` claim (the signer's public key)."""
        return str(self.claims.get("iss", ""))

    @property
    def subject(self) -> str:
        """The ``sub`` claim."""
        return str(self.claims.get("sub", ""))


def encode(claims: dict[str, Any], signer: KeyPair, *, header: dict[str, str] | None = None) -> str:
    """Sign ``claims`` with ``signer``; fills ``iss``, ``iat`` and ``jti`` when absent."""
    body = dict(claims)
    body.setdefault("iat", int(time.time()))
    body["iss"] = signer.public_key
    body.pop("jti", None)
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":")).encode()).digest()
    body = {"jti": base64.b32encode(digest).decode().rstrip("="), **body}
    head = b64url_encode(json.dumps(header or NATS_HEADER, separators=(",", ":")).encode())
    payload = b64url_encode(json.dumps(body, separators=(",", ":")).encode())
    signing_input = f"{head}.{payload}".encode("ascii")
    return f"{head}.{payload}.{b64url_encode(signer.sign(signing_input))}"


def decode(token: str) -> DecodedJWT:
    """Split and decode a JWT without checking its signature."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JWTError(f"a JWT has 3 dot-separated parts, this one has {len(parts)}")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JWTError("the JWT header or claims are not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JWTError("the JWT header and claims must be JSON objects")
    return DecodedJWT(
        header=header,
        claims=claims,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=b64url_decode(parts[2]),
    )


def verify(
    token: str, *, now: float | None = None, issuer_kind: KeyKind | None = None
) -> DecodedJWT:
    """Decode ``token`` and check its algorithm, signature, issuer kind and time window."""
    decoded = decode(token)
    alg = str(decoded.header.get("alg", "")).lower()
    if alg not in _ACCEPTED_ALGS:
        raise JWTError(f"unsupported JWT algorithm '{decoded.header.get('alg')}'")
    issuer = decoded.issuer
    try:
        decode_public_key(issuer, issuer_kind)
    except IdentityError as exc:
        raise JWTError(f"JWT issuer is not valid: {exc}") from exc
    if not verify_signature(issuer, decoded.signing_input, decoded.signature):
        raise JWTError("JWT signature does not verify against its issuer")
    moment = time.time() if now is None else now
    exp, nbf = decoded.claims.get("exp"), decoded.claims.get("nbf")
    if isinstance(exp, int | float) and exp and moment > exp:
        raise JWTError("JWT has expired")
    if isinstance(nbf, int | float) and nbf and moment < nbf:
        raise JWTError("JWT is not valid yet")
    return decoded


# --- NATS claims builders -----------------------------------------------------------


def operator_claims(
    operator: KeyPair, name: str, *, system_account: str | None = None
) -> dict[str, Any]:
    """Claims of a self-signed operator JWT."""
    nats: dict[str, Any] = {"type": "operator", "version": 2}
    if system_account:
        nats["system_account"] = system_account
    return {"sub": operator.public_key, "name": name, "nats": nats}


def account_claims(account_public_key: str, name: str, *, jetstream: bool = True) -> dict[str, Any]:
    """Claims of an account JWT (signed by the operator); JetStream unlimited when enabled."""
    storage = UNLIMITED if jetstream else 0
    limits = {
        "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, "imports": UNLIMITED,
        "exports": UNLIMITED, "wildcards": True, "conn": UNLIMITED, "leaf": UNLIMITED,
        # the server reads Go's field names: mem_storage, not memory_storage
        "mem_storage": storage, "disk_storage": storage, "streams": UNLIMITED,
        "consumer": UNLIMITED,
    }  # fmt: skip
    return {
        "sub": account_public_key,
        "name": name,
        "nats": {"type": "account", "version": 2, "limits": limits},
    }


def user_claims(
    user_public_key: str,
    name: str,
    *,
    publish: list[str] | None = None,
    subscribe: list[str] | None = None,
    expires_at: int | None = None,
) -> dict[str, Any]:
    """Claims of a user JWT (signed by its account key); no permission lists = all allowed."""
    nats: dict[str, Any] = {
        "type": "user", "version": 2, "pub": {}, "sub": {},
        "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
    }  # fmt: skip
    if publish is not None:
        nats["pub"] = {"allow": publish}
    if subscribe is not None:
        nats["sub"] = {"allow": subscribe}
    claims: dict[str, Any] = {"sub": user_public_key, "name": name, "nats": nats}
    if expires_at is not None:
        claims["exp"] = expires_at
    return claims


def scoped_user_claims(
    user_public_key: str,
    name: str,
    *,
    issuer_account: str,
    expires_at: int | None = None,
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Claims of a user JWT signed by a scoped signing key of ``issuer_account``.

    It carries no permissions or limits: the server refuses those on a scoped user and
    applies the signing key's template instead, with ``{{name()}}`` standing for ``name``.
    """
    nats: dict[str, Any] = {"type": "user", "version": 2, "issuer_account": issuer_account}
    if tags:
        nats["tags"] = list(tags)
    claims: dict[str, Any] = {"sub": user_public_key, "name": name, "nats": nats}
    if expires_at is not None:
        claims["exp"] = expires_at
    return claims


def user_scope(key: str, role: str, template: dict[str, Any]) -> dict[str, Any]:
    """One ``signing_keys`` entry of an account JWT: a scoped user signing key."""
    return {"kind": "user_scope", "key": key, "role": role, "template": template}


def amend_account(
    token: str,
    operator: KeyPair,
    *,
    signing_keys: tuple[dict[str, Any], ...] = (),
    revocations: dict[str, int] | None = None,
    now: float | None = None,
) -> str:
    """Re-sign an account JWT with ``signing_keys`` added and users revoked.

    An entry replaces one with the same ``key``; a revocation keeps the later of two
    times. ``iat`` moves forward, because a resolver keeps the newest JWT it has seen.
    """
    if operator.kind is not KeyKind.OPERATOR:
        raise JWTError(
            f"an account JWT is signed by an operator key, not {operator.kind.name.lower()}"
        )
    decoded = verify(token, issuer_kind=KeyKind.OPERATOR)
    nats = decoded.claims.get("nats")
    if not isinstance(nats, dict) or nats.get("type") != "account":
        raise JWTError("the JWT is not an account JWT")
    claims = {k: v for k, v in decoded.claims.items() if k not in ("jti", "iss")}
    nats = dict(nats)
    if signing_keys:
        new_keys = {entry["key"] for entry in signing_keys}
        kept = [
            entry for entry in nats.get("signing_keys") or []
            if (entry.get("key") if isinstance(entry, dict) else entry) not in new_keys
        ]  # fmt: skip
        nats["signing_keys"] = [*kept, *signing_keys]
    if revocations:
        merged = dict(nats.get("revocations") or {})
        for user, moment in revocations.items():
            merged[user] = max(int(merged.get(user, 0)), int(moment))
        nats["revocations"] = merged
    claims["nats"] = nats
    moment = int(time.time() if now is None else now)
    previous = decoded.claims.get("iat")
    claims["iat"] = max(moment, int(previous) + 1 if isinstance(previous, int) else moment)
    return encode(claims, operator)


# --- .creds files -------------------------------------------------------------------

_CREDS_BLOCK = re.compile(
    r"-{3,}BEGIN (?P<label>[A-Z ]+?)-{3,}\s*(?P<body>\S+?)\s*-{3,}END (?P=label)-{3,}"
)


@dataclass(frozen=True, slots=True, repr=False)
class Creds:
    """A user JWT and the user's seed, as held in a ``.creds`` file."""

    jwt: str
    seed: str

    @property
    def user_public_key(self) -> str:
        """The user key the JWT was issued to."""
        return str(decode(self.jwt).subject)

    def __repr__(self) -> str:
        return f"Creds(user={self.user_public_key})"


def format_creds(user_jwt: str, seed: str) -> str:
    """Render a ``.creds`` file the way ``nsc`` does."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def parse_creds(text: str, *, source: str = "creds") -> Creds:
    """Parse and check a ``.creds`` file: a decodable user JWT and a matching user seed."""
    blocks = {m.group("label"): m.group("body") for m in _CREDS_BLOCK.finditer(text)}
    user_jwt, seed = blocks.get("NATS USER JWT"), blocks.get("USER NKEY SEED")
    if not user_jwt:
        raise CredsError(f"{source}: no 'BEGIN NATS USER JWT' block")
    if not seed:
        raise CredsError(f"{source}: no 'BEGIN USER NKEY SEED' block")
    try:
        decoded = decode(user_jwt)
    except JWTError as exc:
        raise CredsError(f"{source}: the user JWT is malformed: {exc}") from exc
    try:
        key = KeyPair.from_seed(seed)
    except IdentityError as exc:
        raise CredsError(f"{source}: the user seed is malformed: {exc}") from exc
    if key.kind is not KeyKind.USER:
        raise CredsError(f"{source}: the seed is a {key.kind.name.lower()} key, not a user key")
    if decoded.subject != key.public_key:
        raise CredsError(f"{source}: the seed does not belong to the JWT's user")
    return Creds(jwt=user_jwt, seed=seed)


def read_creds(path: Path) -> Creds:
    """Read and check a ``.creds`` file; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredsError(f"credentials file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredsError(f"cannot read credentials file {path}: {exc}") from exc
    return parse_creds(text, source=str(path))


def write_creds(path: Path, creds: Creds) -> None:
    """Write a ``.creds`` file atomically with mode 0600."""
    write_secret(path, format_creds(creds.jwt, creds.seed).encode())
