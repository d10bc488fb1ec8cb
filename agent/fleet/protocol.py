"""The fleet service's wire format: JSON requests and replies, what each side signs. Pure.

Every request is one JSON object. Parsing is strict, because the endpoints face the
internet through the hub: the body size is checked before decoding, unknown fields are
refused (a typo must not silently drop a label), every field has a type and a bound, and
every error names the field — ``FleetRequestError`` with code 400, which the service sends
back as ``{"error": …, "code": 400, "reason": "bad-request"}``.

What is signed (Ed25519 with nkeys, signatures base64url without padding):

* enrollment: ``lattice-edge-enroll:v1\\n{fleet}\\n{nonce}\\n{token id}\\n{user}\\n{host}``,
  by the new user key *and* by the host key, so a device proves it holds both — nobody
  can enroll a host key they do not own and be handed that host's subjects;
* renewal: ``lattice-edge-renew:v1\\n{fleet}\\n{host}\\n{user}\\n{ts}`` by the user key;
* admin: ``lattice-edge-admin:v1\\n{fleet}\\n{op}\\n`` + the canonical JSON of
  ``{"args", "nonce", "ts"}``, by the fleet's admin key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import FleetRequestError
from agent.identity.keys import KeyKind, is_public_key, verify_signature

__all__ = [
    "MAX_REQUEST_BYTES",
    "AdminRequest",
    "ChallengeRequest",
    "EnrollReply",
    "EnrollRequest",
    "RenewReply",
    "RenewRequest",
    "admin_message",
    "b64",
    "b64decode",
    "canonical_json",
    "enroll_message",
    "error_body",
    "parse_admin",
    "parse_challenge",
    "parse_enroll",
    "parse_enroll_reply",
    "parse_renew",
    "parse_renew_reply",
    "parse_reply",
    "printable",
    "renew_message",
    "signature_ok",
]

MAX_REQUEST_BYTES = 64 * 1024
MAX_STRING = 4096
MAX_ENTRIES = 64
MAX_CLOCK_SKEW_S = 300
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else "a value"


def _bad(message: str) -> FleetRequestError:
    return FleetRequestError(message, code=400, reason="bad-request")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_object(body: bytes, what: str, *, limit: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    """``body`` as a JSON object; refuses oversized, non-UTF-8, non-JSON and non-object bodies."""
    if len(body) > limit:
        raise _bad(f"{what}: the body is {len(body)} bytes, more than {limit}")
    try:
        value = json.loads(bytes(body).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _bad(f"{what}: the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(f"{what}: the body is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _bad(f"{what}: the body must be a JSON object, not {_kind(value)}")
    return value


class Fields:
    """Reads the fields of one request object; every error names the field."""

    def __init__(self, table: dict[str, Any], what: str, known: set[str]) -> None:
        unknown = sorted(set(table) - known)
        if unknown:
            raise _bad(f"{what}: unknown field '{printable(unknown[0])}'")
        self.table = table
        self.what = what

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.table or self.table[key] is None:
            if required:
                raise _bad(f"{self.what}: '{key}' is missing")
            return None
        return self.table[key]

    def string(self, key: str, *, required: bool = True, limit: int = MAX_STRING) -> str:
        value = self._get(key, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _bad(f"{self.what}: '{key}' must be a string, not {_kind(value)}")
        if len(value) > limit:
            raise _bad(f"{self.what}: '{key}' is longer than {limit} characters")
        if not value.isprintable():
            raise _bad(f"{self.what}: '{key}' holds control or unpaired characters")
        return value

    def key(self, key: str, kind: KeyKind, *, required: bool = True) -> str:
        value = self.string(key, required=required, limit=64)
        if value and not is_public_key(value, kind):
            raise _bad(f"{self.what}: '{key}' is not a public {kind.name.lower()} key")
        return value

    def integer(self, key: str, *, low: int, high: int, default: int | None = None) -> int:
        value = self._get(key, default is None)
        if value is None:
            assert default is not None
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"{self.what}: '{key}' must be an integer, not {_kind(value)}")
        if not low <= value <= high:
            raise _bad(f"{self.what}: '{key}' must be between {low} and {high}")
        return value

    def signature(self, key: str) -> bytes:
        text = self.string(key, limit=128)
        try:
            raw = b64decode(text)
        except ValueError:
            raise _bad(f"{self.what}: '{key}' is not base64url") from None
        if len(raw) != 64:
            raise _bad(f"{self.what}: '{key}' must be a 64-byte Ed25519 signature")
        return raw

    def labels(self, key: str) -> dict[str, str]:
        value = self._get(key, False)
        if value is None:
            return {}
        return check_labels(value, f"{self.what}: '{key}'")

    def table_of(self, key: str) -> dict[str, Any]:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _bad(f"{self.what}: '{key}' must be an object, not {_kind(value)}")
        return value


def check_labels(value: object, what: str) -> dict[str, str]:
    """A label map: at most 64 entries, keys like ``site`` or ``lattice-edge.board``."""
    if not isinstance(value, dict):
        raise _bad(f"{what} must be an object of strings, not {_kind(value)}")
    if len(value) > MAX_ENTRIES:
        raise _bad(f"{what} has more than {MAX_ENTRIES} entries")
    labels: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise _bad(
                f"{what}: '{printable(str(k))}' is not a label name (letters, digits, . _ / -)"
            )
        if not isinstance(v, str):
            raise _bad(f"{what}: label '{k}' must be a string, not {_kind(v)}")
        if len(v) > 256 or not v.isprintable():
            raise _bad(f"{what}: label '{k}' must be printable and at most 256 characters")
        labels[k] = v
    return labels


def printable(text: str) -> str:
    """``text`` made safe to quote in an error or a log line."""
    return text[:64].encode("unicode_escape").decode("ascii")


def b64(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of :func:`b64`; ValueError when ``text`` is not strictly base64url."""
    if not _B64URL.match(text):
        raise ValueError("not base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def signature_ok(public_key: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    return verify_signature(public_key, message, signature)


def canonical_json(value: Any) -> bytes:
    """The one JSON spelling both sides sign: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def enroll_message(fleet: str, nonce: str, token_id: str, user_key: str, host_key: str) -> bytes:
    """What the device signs, with its user key and with its host key, to enroll."""
    return f"lattice-edge-enroll:v1\n{fleet}\n{nonce}\n{token_id}\n{user_key}\n{host_key}".encode()


def renew_message(fleet: str, host_key: str, user_key: str, ts: int) -> bytes:
    """What the device signs with its user key to renew."""
    return f"lattice-edge-renew:v1\n{fleet}\n{host_key}\n{user_key}\n{ts}".encode()


def admin_message(fleet: str, op: str, ts: int, nonce: str, args: Mapping[str, Any]) -> bytes:
    """What the fleet owner signs with the admin key for one admin request."""
    body = canonical_json({"args": dict(args), "nonce": nonce, "ts": ts})
    return f"lattice-edge-admin:v1\n{fleet}\n{op}\n".encode() + body


def error_body(error: FleetRequestError) -> bytes:
    """The JSON body of an error reply."""
    return canonical_json({"error": str(error), "code": error.code, "reason": error.reason})


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChallengeRequest:
    """``enroll.challenge``: ask for a nonce to sign for this token."""

    token_id: str


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """``enroll.complete``: spend a token, proving possession of both keys."""

    token: str
    nonce: str
    user_key: str
    host_key: str
    user_signature: bytes = field(repr=False)
    host_signature: bytes = field(repr=False)
    facts: dict[str, str]
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class RenewRequest:
    """``device.{host}.renew``: a fresh JWT for the device's current user key."""

    host_key: str
    user_key: str
    ts: int
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """``admin.{op}``: a signed request of the fleet owner."""

    ts: int
    nonce: str
    args: dict[str, Any]
    signature: bytes = field(repr=False)


def parse_challenge(body: bytes) -> ChallengeRequest:
    """Parse ``{"token_id"}``."""
    what = "enroll challenge"
    f = Fields(decode_object(body, what), what, {"token_id"})
    return ChallengeRequest(token_id=f.string("token_id", limit=16))


def parse_enroll(body: bytes) -> EnrollRequest:
    """Parse the enrollment request; see :class:`EnrollRequest`."""
    what = "enroll request"
    known = {"token", "nonce", "user_key", "host_key", "user_signature", "host_signature",
             "facts", "labels"}  # fmt: skip
    f = Fields(decode_object(body, what), what, known)
    facts = f.table_of("facts")
    if len(facts) > MAX_ENTRIES or not all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 256
        for k, v in facts.items()
    ):
        raise _bad(f"{what}: 'facts' must map at most {MAX_ENTRIES} short names to short strings")
    return EnrollRequest(
        token=f.string("token", limit=128),
        nonce=f.string("nonce", limit=512),
        user_key=f.key("user_key", KeyKind.USER),
        host_key=f.key("host_key", KeyKind.SERVER),
        user_signature=f.signature("user_signature"),
        host_signature=f.signature("host_signature"),
        facts={str(k): str(v) for k, v in facts.items()},
        labels=f.labels("labels"),
    )


def parse_renew(body: bytes) -> RenewRequest:
    """Parse ``{"host_key", "user_key", "ts", "signature"}``."""
    what = "renew request"
    f = Fields(decode_object(body, what), what, {"host_key", "user_key", "ts", "signature"})
    return RenewRequest(
        host_key=f.key("host_key", KeyKind.SERVER),
        user_key=f.key("user_key", KeyKind.USER),
        ts=f.integer("ts", low=0, high=2**40),
        signature=f.signature("signature"),
    )


def parse_admin(body: bytes) -> AdminRequest:
    """Parse the admin envelope ``{"ts", "nonce", "args", "signature"}``."""
    what = "admin request"
    f = Fields(decode_object(body, what), what, {"ts", "nonce", "args", "signature"})
    return AdminRequest(
        ts=f.integer("ts", low=0, high=2**40),
        nonce=f.string("nonce", limit=64),
        args=f.table_of("args"),
        signature=f.signature("signature"),
    )


def admin_args(args: dict[str, Any], op: str, known: set[str]) -> Fields:
    """The fields of an admin operation's ``args``."""
    return Fields(args, f"{op} arguments", known)


# --- replies ------------------------------------------------------------------------------


def parse_reply(data: bytes, headers: Mapping[str, str] | None, what: str) -> dict[str, Any]:
    """A service reply as a dict, or the service's error as FleetRequestError."""
    code_header = (headers or {}).get("Nats-Service-Error-Code")
    try:
        body = json.loads(bytes(data).decode("utf-8")) if data else {}
    except (UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and "error" in body:
        try:
            code = int(body.get("code") or code_header or 500)
        except (TypeError, ValueError):
            code = 500
        error = body["error"]
        message = error[:500] if isinstance(error, str) else printable(str(error))
        raise FleetRequestError(
            f"{what}: {message}",
            code=code,
            reason=str(body.get("reason") or "error")[:64],
        )
    if code_header:
        message = (headers or {}).get("Nats-Service-Error", "error")
        raise FleetRequestError(f"{what}: {message[:500]}", code=500, reason="error")
    if not isinstance(body, dict):
        raise FleetRequestError(f"{what}: the fleet service sent a reply that is not JSON",
                                code=502, reason="bad-reply")  # fmt: skip
    return body


@dataclass(frozen=True, slots=True)
class EnrollReply:
    """What an enrolled device receives: only public material."""

    user_jwt: str
    leaf_urls: tuple[str, ...]
    lattice: str
    labels: dict[str, str]
    trusted_issuers: tuple[str, ...]
    cluster_issuers: tuple[str, ...]
    fleet: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class RenewReply:
    """A renewed user JWT."""

    user_jwt: str
    expires_at: int


def _keys(f: Fields, key: str, kind: KeyKind) -> tuple[str, ...]:
    value = f.table.get(key) or []
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise _bad(f"{f.what}: '{key}' must be a list of keys")
    for item in value:
        if not isinstance(item, str) or not is_public_key(item, kind):
            raise _bad(f"{f.what}: '{key}' holds something that is not a {kind.name.lower()} key")
    return tuple(value)


def parse_enroll_reply(body: dict[str, Any]) -> EnrollReply:
    """Check the reply to ``enroll.complete``."""
    what = "enroll reply"
    f = Fields(body, what, {"user_jwt", "leaf_urls", "lattice", "labels", "trusted_issuers",
                            "cluster_issuers", "fleet", "expires_at"})  # fmt: skip
    urls = body.get("leaf_urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise _bad(f"{what}: 'leaf_urls' must be a non-empty list of URLs")
    return EnrollReply(
        user_jwt=f.string("user_jwt", limit=8192),
        leaf_urls=tuple(urls),
        lattice=f.string("lattice", limit=64),
        labels=f.labels("labels"),
        trusted_issuers=_keys(f, "trusted_issuers", KeyKind.ACCOUNT),
        cluster_issuers=_keys(f, "cluster_issuers", KeyKind.CLUSTER),
        fleet=f.string("fleet", limit=16),
        expires_at=f.integer("expires_at", low=0, high=2**40),
    )


def parse_renew_reply(body: dict[str, Any]) -> RenewReply:
    """Check the reply to ``device.{host}.renew``."""
    f = Fields(body, "renew reply", {"user_jwt", "expires_at"})
    return RenewReply(
        user_jwt=f.string("user_jwt", limit=8192),
        expires_at=f.integer("expires_at", low=0, high=2**40),
    )
