"""wasmCloud 0.x RPC messages: ``Invocation`` / ``InvocationResponse`` and anti-forgery. Pure.

Wire format (msgpack, named maps; wasmCloud/wasmcloud-otp:host_core/native/
hostcore_wasmcloud_native/src/inv.rs, wasmCloud/weld:rpc-rs/src/rpc_client.rs and the Rust
host's core crate 0.82)::

    Invocation          {origin, target: {public_key, contract_id, link_name}, operation,
                         msg: bin, id, encoded_claims: JWT, host_id, content_length: u64,
                         traceContext: {str: str}}
    InvocationResponse  {msg: bin, invocation_id, error?: str, content_length: u64,
                         instance_id (OTP), traceContext}

Decoding is defensive: ``msg`` is accepted as bin, as str (its UTF-8 bytes) or as an array
of byte values (what a serializer without ``serde_bytes`` writes); ``content_length`` and
``traceContext`` may be absent (OTP omits them); unknown keys are ignored; every field's
type and size is checked and an :class:`~agent.errors.InvocationError` names the field.
Encoding always writes ``msg`` as bin and ``content_length`` (Rust 0.82 requires it).

``encoded_claims`` is a wascap JWT signed by the sender's **cluster** key:
``{jti, iat, iss: C…, sub: invocation id, wascap: {target_url, origin_url, hash},
wascap_revision}`` with ``hash = HEX_UPPER(SHA256(origin_url ‖ target_url ‖ operation ‖
msg))``. :func:`validate_invocation` checks it; see its docstring for the order.

wash 0.x ``call``: two generations of wash build the invocations it sends, both accepted:

* wash up to the ``wasmbus-rpc`` era (wasmCloud/wash:src/call.rs) uses the weld
  ``RpcClient``: the origin is ``WasmCloudEntity::new_actor("__WASH__")`` — not a key, so
  its URL is ``wasmbus:////__WASH__`` — and ``host_id`` is the fixed string
  ``NwashHostCallerId000…`` (56 characters, not a decodable nkey; hosts of that era only
  rejected ids that neither start with ``N`` nor are 56 long, see
  :data:`WASH_LEGACY_HOST_ID`). ``id``/``sub`` are a simple (dash-less) uuid v4.
* later wash (``wash_lib`` + ``wasmcloud_core``; wasmCloud/wasmCloud's wash-cli before 1.0)
  makes the origin the target actor itself and uses the valid server key
  ``NAWASHVALZUZPZNXPIF6HGQ4OMJYLXQ4B2WZZ5AMBCXKWEQPYXDOIWMA`` as ``host_id``.

In both the JWT is signed by the cluster seed given with ``--cluster-seed`` or the context.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from agent.errors import (
    AntiForgeryError,
    ChunkedInvocationError,
    IdentityError,
    InvocationError,
    JWTError,
)
from agent.identity import jwt
from agent.identity.keys import KeyKind, KeyPair, decode_public_key, verify_signature

__all__ = [
    "ANTI_FORGERY_CHECKS",
    "CHUNK_THRESHOLD",
    "INVOCATION_HEADER",
    "MAX_INVOCATION_BYTES",
    "WASH_LEGACY_HOST_ID",
    "Invocation",
    "InvocationClaims",
    "InvocationResponse",
    "WasmCloudEntity",
    "invocation_hash",
    "new_invocation",
    "validate_invocation",
]

INVOCATION_HEADER = {"typ": "jwt", "alg": "Ed25519"}
WASCAP_REVISION = 3
CHUNK_THRESHOLD = 900 * 1024  # wasmCloud moves larger bodies to the object store
# A NATS message is at most max_payload (1 MiB by default, 64 MiB at most); wasmCloud chunks
# anything above 900 KiB, so a generous bound still stops a hostile peer early.
MAX_INVOCATION_BYTES = 8 * 1024 * 1024
MAX_FIELD_CHARS = 1024  # keys, ids, contract ids, link names, operations
MAX_CLAIMS_CHARS = 16 * 1024
MAX_ERROR_CHARS = 8 * 1024
MAX_TRACE_ENTRIES = 64
# wash's fixed host id up to the wasmbus-rpc era (wasmCloud/wash:src/call.rs `WASH_HOST_ID`)
WASH_LEGACY_HOST_ID = "NwashHostCallerId000000000000000000000000000000000000000"
_URL_SCHEME = "wasmbus"

#: The names :class:`~agent.errors.AntiForgeryError` puts in ``check``, in checking order.
ANTI_FORGERY_CHECKS = (
    "format",  # not three base64url/JSON segments
    "header",  # alg is not Ed25519 or typ is not jwt
    "claims",  # claims lack or mistype iss, sub, wascap.{target_url, origin_url, hash}
    "signature",  # the signature does not verify against iss
    "issuer_kind",  # iss is not a cluster (C…) key
    "issuer",  # iss is not in cluster_issuers
    "expired",  # past exp
    "not_yet_valid",  # before nbf
    "subject",  # sub is not the invocation id
    "target_url",  # claims' target_url is not the invocation's
    "origin_url",  # claims' origin_url is not the invocation's
    "hash",  # the invocation hash does not match the claims
    "host_id",  # host_id is not a server or cluster key
    "target",  # the target is not the actor this subscription serves
)


# --- entities --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WasmCloudEntity:
    """The origin or target of an invocation: an actor (``M…``) or a provider link."""

    public_key: str
    contract_id: str = ""
    link_name: str = ""

    @classmethod
    def actor(cls, public_key: str) -> WasmCloudEntity:
        """An actor entity (empty contract id and link name)."""
        return cls(public_key)

    @classmethod
    def provider(cls, public_key: str, contract_id: str, link_name: str) -> WasmCloudEntity:
        """A capability provider entity, addressed by contract id and link name."""
        return cls(public_key, contract_id, link_name)

    def url(self) -> str:
        """``wasmbus://{pk}`` for actors, ``wasmbus://{contract}/{link}/{pk}`` otherwise.

        The test is on the key's first letter, case-insensitively, exactly as wasmCloud's
        hosts and weld do it; anything else (providers, wash's ``__WASH__``) gets the long
        form with ``:`` → ``/`` and `` `` → ``_`` in the contract id, lower-cased.
        """
        if self.public_key.upper().startswith("M"):
            return f"{_URL_SCHEME}://{self.public_key}"
        contract = self.contract_id.replace(":", "/").replace(" ", "_").lower()
        link = self.link_name.replace(" ", "_").lower()
        return f"{_URL_SCHEME}://{contract}/{link}/{self.public_key}"

    def to_wire(self) -> dict[str, str]:
        """The msgpack/JSON map of this entity."""
        return {
            "public_key": self.public_key,
            "contract_id": self.contract_id,
            "link_name": self.link_name,
        }

    @classmethod
    def from_wire(cls, value: object, name: str = "entity") -> WasmCloudEntity:
        """Parse an entity map; InvocationError naming ``name`` when malformed."""
        if not isinstance(value, dict):
            raise InvocationError(f"'{name}' must be a map, not {_kind(value)}")
        return cls(
            public_key=_str(value, "public_key", name),
            contract_id=_str(value, "contract_id", name, required=False),
            link_name=_str(value, "link_name", name, required=False),
        )


def invocation_hash(origin_url: str, target_url: str, operation: str, msg: bytes) -> str:
    """``HEX_UPPER(SHA256(origin_url ‖ target_url ‖ operation ‖ msg))`` (wasmbus 0.5x+)."""
    digest = hashlib.sha256()
    for part in (origin_url.encode(), target_url.encode(), operation.encode(), msg):
        digest.update(part)
    return digest.hexdigest().upper()


# --- field helpers ---------------------------------------------------------------------


def _kind(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _where(key: str, parent: str | None) -> str:
    return f"{parent}.{key}" if parent else key


def _str(
    m: dict[Any, Any],
    key: str,
    parent: str | None = None,
    *,
    required: bool = True,
    max_chars: int = MAX_FIELD_CHARS,
) -> str:
    name = _where(key, parent)
    value = m.get(key)
    if value is None:
        if required:
            raise InvocationError(f"'{name}' is missing")
        return ""
    if not isinstance(value, str):
        raise InvocationError(f"'{name}' must be a string, not {_kind(value)}")
    if len(value) > max_chars:
        raise InvocationError(f"'{name}' is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot go on the wire
        raise InvocationError(f"'{name}' is not valid Unicode") from None
    return value


def _bytes(m: dict[Any, Any], key: str) -> bytes:
    value = m.get(key)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # some non-Rust encoders write the body as a msgpack str; its bytes are the body
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value
    ):
        return bytes(value)  # a Vec<u8> serialized without serde_bytes
    raise InvocationError(f"'{key}' must be binary, not {_kind(value)}")


def _length(m: dict[Any, Any], key: str) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvocationError(f"'{key}' must be an unsigned integer, not {_kind(value)}")
    if not 0 <= value < 2**64:
        raise InvocationError(f"'{key}' is out of range for a u64")
    return value


def _trace(m: dict[Any, Any]) -> dict[str, str]:
    value = m.get("traceContext")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvocationError(f"'traceContext' must be a map, not {_kind(value)}")
    if len(value) > MAX_TRACE_ENTRIES:
        raise InvocationError(f"'traceContext' has more than {MAX_TRACE_ENTRIES} entries")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvocationError("'traceContext' must map strings to strings")
        if len(k) > MAX_FIELD_CHARS or len(v) > MAX_FIELD_CHARS:
            raise InvocationError(f"a 'traceContext' entry is longer than {MAX_FIELD_CHARS}")
        _str({"k": k, "v": v}, "k", "traceContext")
        _str({"k": k, "v": v}, "v", "traceContext")
    return dict(value)


def _unpack(data: bytes, what: str) -> dict[Any, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvocationError(f"an {what} must be bytes, not {_kind(data)}")
    if len(data) > MAX_INVOCATION_BYTES:
        raise InvocationError(f"the {what} is larger than {MAX_INVOCATION_BYTES} bytes")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        # ValueError covers FormatError, StackError, ExtraData, bad UTF-8 and length limits
        raise InvocationError(f"the {what} is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvocationError(f"the {what} must be a msgpack map, not {_kind(obj)}")
    return obj


def _pack(obj: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


# --- invocation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """One RPC request to an actor or provider."""

    origin: WasmCloudEntity
    target: WasmCloudEntity
    operation: str
    msg: bytes
    id: str
    encoded_claims: str
    host_id: str
    content_length: int | None = None  # None: the sender omitted it (OTP may)
    trace_context: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def origin_url(self) -> str:
        """The origin's URL, as signed in the claims."""
        return self.origin.url()

    @property
    def target_url(self) -> str:
        """``target.url() + "/" + operation``, as signed in the claims."""
        return f"{self.target.url()}/{self.operation}"

    @property
    def hash(self) -> str:
        """The invocation hash of this invocation's URLs, operation and body."""
        return invocation_hash(self.origin_url, self.target_url, self.operation, self.msg)

    @property
    def is_chunked(self) -> bool:
        """True when the body was moved to the object store (empty ``msg``, length > 0)."""
        return not self.msg and bool(self.content_length)

    def encode(self) -> bytes:
        """msgpack named map; ``content_length`` defaults to ``len(msg)``."""
        length = len(self.msg) if self.content_length is None else self.content_length
        return _pack(
            {
                "origin": self.origin.to_wire(),
                "target": self.target.to_wire(),
                "operation": self.operation,
                "msg": bytes(self.msg),
                "id": self.id,
                "encoded_claims": self.encoded_claims,
                "host_id": self.host_id,
                "content_length": length,
                "traceContext": dict(self.trace_context),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Invocation:
        """Parse an Invocation; InvocationError naming the field when malformed."""
        m = _unpack(data, "invocation")
        return cls(
            origin=WasmCloudEntity.from_wire(m.get("origin"), "origin"),
            target=WasmCloudEntity.from_wire(m.get("target"), "target"),
            operation=_str(m, "operation"),
            msg=_bytes(m, "msg"),
            id=_str(m, "id"),
            encoded_claims=_str(m, "encoded_claims", max_chars=MAX_CLAIMS_CHARS),
            host_id=_str(m, "host_id"),
            content_length=_length(m, "content_length"),
            trace_context=_trace(m),
        )


@dataclass(frozen=True, slots=True)
class InvocationResponse:
    """The reply to an Invocation: a body, or an error (then ``msg`` is ignored)."""

    invocation_id: str
    msg: bytes = b""
    error: str | None = None
    content_length: int | None = None
    instance_id: str = ""  # the OTP host names the actor instance that answered
    trace_context: dict[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def success(
        cls, invocation_id: str, msg: bytes, *, instance_id: str = ""
    ) -> InvocationResponse:
        """A successful reply carrying ``msg``."""
        return cls(invocation_id, bytes(msg), None, len(msg), instance_id)

    @classmethod
    def failure(cls, invocation_id: str, message: str) -> InvocationResponse:
        """An error reply; the message is cut to a bounded length."""
        text = message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "…"
        return cls(invocation_id, b"", text or "invocation failed", 0)

    @property
    def ok(self) -> bool:
        """True when the reply carries no error."""
        return self.error is None

    @property
    def is_chunked(self) -> bool:
        """True when the body was moved to the object store (``content_length`` > ``msg``)."""
        return self.content_length is not None and self.content_length > len(self.msg)

    def encode(self) -> bytes:
        """msgpack named map; ``error`` only when set, as Rust hosts skip a None."""
        length = len(self.msg) if self.content_length is None else self.content_length
        body: dict[str, Any] = {
            "msg": bytes(self.msg),
            "invocation_id": self.invocation_id,
            "content_length": length,
            "traceContext": dict(self.trace_context),
        }
        if self.error is not None:
            body["error"] = self.error
        if self.instance_id:
            body["instance_id"] = self.instance_id
        return _pack(body)

    @classmethod
    def decode(cls, data: bytes) -> InvocationResponse:
        """Parse an InvocationResponse; InvocationError naming the field when malformed."""
        m = _unpack(data, "invocation response")
        error = m.get("error")
        if error is not None and not isinstance(error, str):
            raise InvocationError(f"'error' must be a string, not {_kind(error)}")
        if error is not None and len(error) > MAX_INVOCATION_BYTES:
            raise InvocationError("'error' is too long")
        return cls(
            invocation_id=_str(m, "invocation_id"),
            msg=_bytes(m, "msg"),
            error=error,
            content_length=_length(m, "content_length"),
            instance_id=_str(m, "instance_id", required=False),
            trace_context=_trace(m),
        )


# --- building and checking ---------------------------------------------------------------


def _check_entity(entity: WasmCloudEntity, name: str) -> None:
    if not isinstance(entity, WasmCloudEntity):
        raise InvocationError(f"'{name}' must be a WasmCloudEntity")
    WasmCloudEntity.from_wire(entity.to_wire(), name)  # same type and size rules as decoding


def new_invocation(
    origin: WasmCloudEntity,
    target: WasmCloudEntity,
    operation: str,
    msg: bytes,
    *,
    cluster_key: KeyPair,
    host_id: str,
    now: float | None = None,
    invocation_id: str | None = None,
    trace_context: Mapping[str, str] | None = None,
) -> Invocation:
    """Build an Invocation with its anti-forgery JWT signed by ``cluster_key``.

    ``invocation_id`` defaults to a fresh uuid4 (it is also the JWT's ``sub``); ``now``
    (seconds) sets ``iat``.
    """
    if cluster_key.kind is not KeyKind.CLUSTER:
        raise InvocationError(
            f"invocations are signed with a cluster (C…) key, not a {cluster_key.kind.name.lower()}"
            " key"
        )
    _check_entity(origin, "origin")
    _check_entity(target, "target")
    inv_id = str(uuid.uuid4()) if invocation_id is None else invocation_id
    fields = {"operation": operation, "id": inv_id, "host_id": host_id}
    for name in fields:
        _str(fields, name)
    if not isinstance(msg, bytes | bytearray | memoryview):
        raise InvocationError(f"'msg' must be bytes, not {_kind(msg)}")
    body = bytes(msg)
    if len(body) > MAX_INVOCATION_BYTES:
        raise InvocationError(f"'msg' is larger than {MAX_INVOCATION_BYTES} bytes")
    trace = _trace({"traceContext": dict(trace_context or {})})
    origin_url = origin.url()
    target_url = f"{target.url()}/{operation}"
    claims = {
        "iat": int(time.time() if now is None else now),
        "sub": inv_id,
        "wascap": {
            "target_url": target_url,
            "origin_url": origin_url,
            "hash": invocation_hash(origin_url, target_url, operation, body),
        },
        "wascap_revision": WASCAP_REVISION,
    }
    token = jwt.encode(claims, cluster_key, header=INVOCATION_HEADER)
    return Invocation(origin, target, operation, body, inv_id, token, host_id, len(body), trace)


@dataclass(frozen=True, slots=True)
class InvocationClaims:
    """The checked claims of a valid invocation (for logs and events)."""

    issuer: str
    subject: str
    jti: str | None
    issued_at: int | None
    origin_url: str
    target_url: str
    hash: str


def _fail(check: str, message: str) -> AntiForgeryError:
    return AntiForgeryError(f"invocation rejected: {message}", check=check)


def _opt_time(claims: dict[str, Any], key: str) -> float | None:
    value = claims.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail("claims", f"the claims' '{key}' is not a finite number")
    return float(value)


def _host_id_ok(host_id: str) -> bool:
    if host_id == WASH_LEGACY_HOST_ID:
        return True
    if host_id != host_id.strip():
        return False
    try:
        kind, _ = decode_public_key(host_id)
    except IdentityError:
        return False
    return kind in (KeyKind.SERVER, KeyKind.CLUSTER)


def validate_invocation(
    inv: Invocation,
    *,
    cluster_issuers: Collection[str],
    expected_target_pk: str,
    now: float | None = None,
) -> InvocationClaims:
    """Check an invocation's anti-forgery claims; AntiForgeryError (``check`` = which) if not.

    In order: three-segment JWT; header ``alg`` Ed25519 and ``typ`` jwt; claim types; the
    signature against ``iss``; ``iss`` is a cluster key; ``iss`` ∈ ``cluster_issuers``;
    ``exp``/``nbf``; ``sub`` equals the invocation id (every sender — wascap, weld, OTP,
    the Rust host — sets it so, and binding the id into the signature stops a captured
    token from being replayed under another id); target and origin URLs equal the claimed
    ones; ``content_length`` is consistent with ``msg`` (InvocationError if not) and the
    body is not chunked (ChunkedInvocationError — checked only after the signature, so
    unauthenticated senders learn nothing); the hash; ``host_id``; finally the target key
    is ``expected_target_pk`` (the actor whose subject this arrived on).

    ``host_id`` is not covered by the signature, so its check is a sanity check: a server
    key (``N…``; Rust 0.82 requires one), a cluster key (``C…``: the OTP host sets host_id
    to its cluster public key, inv.rs ``Invocation::new``), or wash's fixed legacy id.
    """
    token = inv.encoded_claims
    if token.count(".") != 2:
        raise _fail("format", "encoded_claims is not a three-part JWT")
    try:
        decoded = jwt.decode(token)
    except JWTError as exc:
        raise _fail("format", f"encoded_claims is not a JWT: {exc}") from exc
    except (RecursionError, ValueError) as exc:
        raise _fail("format", "encoded_claims does not decode") from exc
    alg, typ = decoded.header.get("alg"), decoded.header.get("typ")
    if not isinstance(alg, str) or alg.lower() != "ed25519":
        raise _fail("header", f"the JWT algorithm is {alg!r}, expected 'Ed25519'")
    if not isinstance(typ, str) or typ.lower() != "jwt":
        raise _fail("header", f"the JWT type is {typ!r}, expected 'jwt'")
    claims = decoded.claims
    issuer, subject, wascap = claims.get("iss"), claims.get("sub"), claims.get("wascap")
    if not isinstance(issuer, str) or not isinstance(subject, str):
        raise _fail("claims", "the claims lack a string 'iss' or 'sub'")
    if not isinstance(wascap, dict) or not all(
        isinstance(wascap.get(k), str) for k in ("target_url", "origin_url", "hash")
    ):
        raise _fail("claims", "the claims lack wascap 'target_url', 'origin_url' or 'hash'")
    expires, not_before = _opt_time(claims, "exp"), _opt_time(claims, "nbf")
    issued_at = _opt_time(claims, "iat")
    jti = claims.get("jti")
    try:
        kind, _ = decode_public_key(issuer)
    except IdentityError as exc:
        raise _fail("issuer_kind", f"the issuer {issuer!r} is not a public key") from exc
    if not verify_signature(issuer, decoded.signing_input, decoded.signature):
        raise _fail("signature", f"the claims' signature does not verify against {issuer}")
    if kind is not KeyKind.CLUSTER:
        raise _fail("issuer_kind", f"the issuer {issuer} is a {kind.name.lower()} key, not C…")
    if issuer not in cluster_issuers:
        raise _fail("issuer", f"the issuer {issuer} is not among the cluster issuers")
    moment = time.time() if now is None else now
    if expires and moment > expires:
        raise _fail("expired", "the claims have expired")
    if not_before and moment < not_before:
        raise _fail("not_yet_valid", "the claims are not valid yet")
    if subject != inv.id:
        raise _fail("subject", f"the claims' subject {subject!r} is not the id {inv.id!r}")
    if wascap["target_url"] != inv.target_url:
        raise _fail("target_url", f"signed for {wascap['target_url']!r}, not {inv.target_url!r}")
    if wascap["origin_url"] != inv.origin_url:
        raise _fail("origin_url", f"signed for {wascap['origin_url']!r}, not {inv.origin_url!r}")
    if inv.content_length is not None and inv.msg and inv.content_length != len(inv.msg):
        raise InvocationError(
            f"'content_length' is {inv.content_length} but 'msg' holds {len(inv.msg)} bytes"
        )
    if inv.is_chunked:
        raise ChunkedInvocationError(
            f"the invocation's {inv.content_length}-byte body was sent through the object "
            "store (chunked), which this host does not support"
        )
    if wascap["hash"].upper() != inv.hash:
        raise _fail("hash", "the invocation hash does not match the signed hash")
    if not _host_id_ok(inv.host_id):
        raise _fail("host_id", f"host_id {inv.host_id!r} is not a server or cluster key")
    if inv.target.public_key != expected_target_pk:
        raise _fail(
            "target", f"the target {inv.target.public_key} is not the actor {expected_target_pk}"
        )
    return InvocationClaims(
        issuer=issuer,
        subject=subject,
        jti=jti if isinstance(jti, str) else None,
        issued_at=None if issued_at is None else int(issued_at),
        origin_url=wascap["origin_url"],
        target_url=wascap["target_url"],
        hash=wascap["hash"],
    )
