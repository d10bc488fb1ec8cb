"""Control-interface bodies (JSON) of the wasmCloud 0.x lattice: parse requests, build replies.

Pure, no I/O. Requests arrive as bytes and become frozen dataclasses; anything malformed —
not UTF-8 JSON, not an object, a missing key, a wrong type, an oversized body or value —
raises one :class:`~agent.errors.ControlRequestError` whose message names the field.
Unknown keys are ignored, as serde does on both wasmCloud hosts. Replies are JSON-ready
dicts (:func:`encode_json` makes the bytes), shaped as the OTP host and the Rust host 0.82
send them; where the two differ without conflict both field sets are present.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import ControlRequestError

if TYPE_CHECKING:  # imported for types only: keeps wascap (and wasm parsing) off this path
    from agent.identity.wascap import ActorClaims

__all__ = [
    "MAX_REQUEST_BYTES",
    "ActorAuction",
    "ActorInfo",
    "ActorInstanceInfo",
    "HostInventory",
    "LinkDefinition",
    "LinkDelete",
    "ProviderInfo",
    "ScaleActor",
    "StartActor",
    "StopHost",
    "UpdateActor",
    "ack",
    "auction_reply",
    "claims_entry",
    "claims_reply",
    "encode_json",
    "labels_satisfy",
    "linkdef_id",
    "links_reply",
    "parse_actor_auction",
    "parse_linkdef_del",
    "parse_linkdef_put",
    "parse_scale_actor",
    "parse_start_actor",
    "parse_stop_host",
    "parse_update_actor",
    "ping_reply",
    "uptime_human",
]

MAX_REQUEST_BYTES = 256 * 1024
MAX_STRING = 4096  # refs, ids, names
MAX_VALUE = 16 * 1024  # one annotation, constraint or link value
MAX_ENTRIES = 256  # entries of one string map
MAX_COUNT = 65_535  # wasmCloud 0.82 counts are u16


# --- parsing helpers ---------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _object(body: bytes, what: str) -> dict[str, Any]:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ControlRequestError(f"{what}: the body must be bytes")
    if len(body) > MAX_REQUEST_BYTES:
        raise ControlRequestError(f"{what}: the body is larger than {MAX_REQUEST_BYTES} bytes")
    if not bytes(body).strip():
        raise ControlRequestError(f"{what}: the body is empty; expected a JSON object")
    try:
        value = json.loads(bytes(body), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ControlRequestError(f"{what}: the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ControlRequestError(f"{what}: the body must be a JSON object")
    return value


def _kind(value: object) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", list: "an array"}.get(
        type(value), "a number" if isinstance(value, int | float) else "an object"
    )


def _str(m: dict[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    value = m.get(key)
    if value is None:
        if default is None:
            raise ControlRequestError(f"{what}: '{key}' is missing")
        return default
    if not isinstance(value, str):
        raise ControlRequestError(f"{what}: '{key}' must be a string, not {_kind(value)}")
    if len(value) > MAX_STRING:
        raise ControlRequestError(f"{what}: '{key}' is longer than {MAX_STRING} characters")
    if not _is_unicode(value):
        raise ControlRequestError(f"{what}: '{key}' holds an unpaired surrogate escape")
    return value


def _is_unicode(text: str) -> bool:
    """False for strings with lone surrogates (JSON ``"\\ud800"``): they cannot be re-encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _nonempty(m: dict[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    value = _str(m, key, what, default=default)
    if not value.strip():
        raise ControlRequestError(f"{what}: '{key}' must not be empty")
    return value


def _opt_str(m: dict[str, Any], key: str, what: str) -> str | None:
    value = _str(m, key, what, default="")
    return value or None


def _int(m: dict[str, Any], key: str, what: str, *, default: int | None, low: int) -> int | None:
    value = m.get(key)
    if value is None:
        return default
    # JSON has no integer type: accept 3.0, refuse 3.5, true and strings
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlRequestError(f"{what}: '{key}' must be an integer, not {_kind(value)}")
    if not low <= value <= MAX_COUNT:
        raise ControlRequestError(f"{what}: '{key}' must be between {low} and {MAX_COUNT}")
    return value


def _str_map(m: dict[str, Any], key: str, what: str) -> dict[str, str]:
    value = m.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ControlRequestError(f"{what}: '{key}' must be an object, not {_kind(value)}")
    if len(value) > MAX_ENTRIES:
        raise ControlRequestError(f"{what}: '{key}' has more than {MAX_ENTRIES} entries")
    for k, v in value.items():
        if not isinstance(v, str):
            raise ControlRequestError(f"{what}: '{key}.{k}' must be a string, not {_kind(v)}")
        if len(k) > MAX_STRING or len(v) > MAX_VALUE:
            raise ControlRequestError(f"{what}: an entry of '{key}' is too long")
        if not (_is_unicode(k) and _is_unicode(v)):
            raise ControlRequestError(f"{what}: an entry of '{key}' holds an unpaired surrogate")
    return dict(value)


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartActor:
    """``cmd.{host}.la`` / ``cmd.{host}.sa``: start ``count`` instances of an actor."""

    actor_ref: str
    host_id: str | None = None
    count: int = 1
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScaleActor:
    """``cmd.{host}.scale``: OTP sends ``actor_id``, Rust 0.82 ``host_id`` and annotations.

    ``count`` is the wanted number of instances (Rust: max instances); 0 stops them all.
    """

    actor_ref: str
    count: int
    actor_id: str | None = None
    host_id: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StopActor:
    """``cmd.{host}.sa`` ("stop actor", as wash sends it): stop instances of an actor.

    ``actor_ref`` is the actor's public key or its image reference; ``count`` 0 (or
    absent) stops every instance; with ``annotations`` only instances carrying all of
    them are stopped.
    """

    actor_ref: str
    count: int = 0
    host_id: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdateActor:
    """``cmd.{host}.upd``: replace an actor's module by ``new_actor_ref``."""

    new_actor_ref: str
    actor_id: str | None = None
    host_id: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StopHost:
    """``cmd.{host}.stop``: stop the host, waiting up to ``timeout`` ms (None: default)."""

    timeout: int | None = None
    host_id: str | None = None


@dataclass(frozen=True, slots=True)
class ActorAuction:
    """``auction.actor``: hosts whose labels include ``constraints`` answer."""

    actor_ref: str
    constraints: dict[str, str] = field(default_factory=dict)


def linkdef_id(actor_id: str, contract_id: str, link_name: str) -> str:
    """The id the Rust host gives a link: ``HEX_UPPER(SHA256(actor ‖ contract ‖ link))``."""
    digest = hashlib.sha256(f"{actor_id}{contract_id}{link_name}".encode())
    return digest.hexdigest().upper()


@dataclass(frozen=True, slots=True)
class LinkDefinition:
    """``linkdefs.put``: link an actor to a provider for one contract and link name."""

    actor_id: str
    contract_id: str
    provider_id: str
    link_name: str = "default"
    values: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Deterministic id of the (actor, contract, link name) triple; see :func:`linkdef_id`."""
        return linkdef_id(self.actor_id, self.contract_id, self.link_name)

    def to_json(self) -> dict[str, Any]:
        """The link as listed by ``get.links`` (``id`` as in OTP's linkdef events)."""
        return {
            "id": self.id,
            "actor_id": self.actor_id,
            "provider_id": self.provider_id,
            "link_name": self.link_name,
            "contract_id": self.contract_id,
            "values": dict(self.values),
        }


@dataclass(frozen=True, slots=True)
class LinkDelete:
    """``linkdefs.del``: remove the link of (actor, contract, link name)."""

    actor_id: str
    contract_id: str
    link_name: str = "default"


def parse_start_actor(body: bytes) -> StartActor:
    """Parse ``la``/``sa`` (``{actor_ref, host_id?, count?=1, annotations?}``)."""
    what = "start actor"
    m = _object(body, what)
    count = _int(m, "count", what, default=1, low=1)
    assert count is not None  # a default is given
    return StartActor(
        actor_ref=_nonempty(m, "actor_ref", what),
        host_id=_opt_str(m, "host_id", what),
        count=count,
        annotations=_str_map(m, "annotations", what),
    )


def parse_scale_actor(body: bytes) -> ScaleActor:
    """Parse ``scale`` in its OTP and Rust 0.82 forms."""
    what = "scale actor"
    m = _object(body, what)
    count = _int(m, "count", what, default=None, low=0)
    if count is None:
        raise ControlRequestError(f"{what}: 'count' is missing")
    return ScaleActor(
        actor_ref=_nonempty(m, "actor_ref", what),
        count=count,
        actor_id=_opt_str(m, "actor_id", what),
        host_id=_opt_str(m, "host_id", what),
        annotations=_str_map(m, "annotations", what),
    )


def parse_stop_actor(body: bytes) -> StopActor:
    """Parse ``sa`` (``{actor_ref, host_id?, count?=0, annotations?}``)."""
    what = "stop actor"
    m = _object(body, what)
    count = _int(m, "count", what, default=0, low=0)
    assert count is not None  # a default is given
    return StopActor(
        actor_ref=_nonempty(m, "actor_ref", what),
        count=count,
        host_id=_opt_str(m, "host_id", what),
        annotations=_str_map(m, "annotations", what),
    )


def parse_update_actor(body: bytes) -> UpdateActor:
    """Parse ``upd`` (``{new_actor_ref, actor_id?, host_id?, annotations?}``)."""
    what = "update actor"
    m = _object(body, what)
    return UpdateActor(
        new_actor_ref=_nonempty(m, "new_actor_ref", what),
        actor_id=_opt_str(m, "actor_id", what),
        host_id=_opt_str(m, "host_id", what),
        annotations=_str_map(m, "annotations", what),
    )


def parse_stop_host(body: bytes) -> StopHost:
    """Parse ``stop`` (``{timeout?, host_id?}``); an empty body means all defaults."""
    what = "stop host"
    if (
        isinstance(body, bytes | bytearray | memoryview)
        and len(body) <= MAX_REQUEST_BYTES
        and not bytes(body).strip()
    ):
        return StopHost()  # wash sends a body, but nothing in it is required
    m = _object(body, what)
    value = m.get("timeout")
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63
    ):
        raise ControlRequestError(f"{what}: 'timeout' must be a non-negative number of ms")
    return StopHost(
        timeout=None if value is None else int(value), host_id=_opt_str(m, "host_id", what)
    )


def parse_actor_auction(body: bytes) -> ActorAuction:
    """Parse ``auction.actor`` (``{actor_ref, constraints}``)."""
    what = "actor auction"
    m = _object(body, what)
    return ActorAuction(
        actor_ref=_nonempty(m, "actor_ref", what),
        constraints=_str_map(m, "constraints", what),
    )


_SUBJECT_UNSAFE = frozenset(".*> \t\r\n\x00")


def _link_token(m: dict[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    """A link id that ends up in an RPC subject: one NATS token, printable."""
    value = _nonempty(m, key, what, default=default)
    if not _SUBJECT_UNSAFE.isdisjoint(value) or not value.isprintable():
        raise ControlRequestError(
            f"{what}: '{key}' must not contain '.', '*', '>', whitespace or control characters"
        )
    return value


def _contract(m: dict[str, Any], what: str) -> str:
    value = _nonempty(m, "contract_id", what)
    if not value.isprintable() or any(c.isspace() or c in "*>" for c in value):
        raise ControlRequestError(
            f"{what}: 'contract_id' must not contain whitespace, wildcards or control characters"
        )
    return value


def parse_linkdef_put(body: bytes) -> LinkDefinition:
    """Parse ``linkdefs.put``; ``link_name`` defaults to ``default``.

    The ids are checked as the call path uses them (provider id and link name become
    tokens of ``wasmbus.rpc.{lattice}.{provider}.{link}``), so a link that could never be
    called, or that would widen a subscription, is refused here instead of stored.
    """
    what = "link definition"
    m = _object(body, what)
    return LinkDefinition(
        actor_id=_link_token(m, "actor_id", what),
        contract_id=_contract(m, what),
        provider_id=_link_token(m, "provider_id", what),
        link_name=_link_token(m, "link_name", what, default="default"),
        values=_str_map(m, "values", what),
    )


def parse_linkdef_del(body: bytes) -> LinkDelete:
    """Parse ``linkdefs.del``; ``link_name`` defaults to ``default``."""
    what = "link deletion"
    m = _object(body, what)
    return LinkDelete(
        actor_id=_nonempty(m, "actor_id", what),
        contract_id=_nonempty(m, "contract_id", what),
        link_name=_nonempty(m, "link_name", what, default="default"),
    )


# --- replies -----------------------------------------------------------------------------


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON of a reply or event; ASCII with escapes, so any str can be encoded."""
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def ack(accepted: bool = True, error: str = "") -> dict[str, Any]:
    """``{"accepted": bool, "error": str}``, the reply to every command."""
    return {"accepted": accepted, "error": error}


_UNITS = (("year", 31_557_600, True), ("month", 2_630_016, True), ("day", 86_400, True))
_SMALL = (("h", 3600), ("m", 60), ("s", 1))


def uptime_human(seconds: float) -> str:
    """Uptime as the Rust host writes it (humantime): ``"1day 2h 3m 4s"``, ``"0s"``.

    Years are 365.25 days and months 30.44 days, as in humantime; zero parts are left out
    and only years, months and days take a plural ``s``. (The OTP host wrote Timex's
    "1 day, 2 hours, …"; clients only display it.)
    """
    rest = max(0, int(seconds))
    if rest == 0:
        return "0s"
    parts: list[str] = []
    for name, size, plural in _UNITS:
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{name}{'s' if plural and n > 1 else ''}")
    for name, size in _SMALL:
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{name}")
    return " ".join(parts)


def ping_reply(
    *,
    host_id: str,
    issuer: str,
    labels: Mapping[str, str],
    friendly_name: str,
    uptime_seconds: float,
    version: str,
    cluster_issuers: Sequence[str],
    lattice: str,
    js_domain: str | None = None,
    ctl_host: str = "",
    rpc_host: str = "",
    prov_rpc_host: str = "",
) -> dict[str, Any]:
    """The Host record answering ``ping.hosts`` (OTP fields plus Rust 0.82's ``lattice``)."""
    return {
        "id": host_id,
        "issuer": issuer,
        "labels": dict(labels),
        "friendly_name": friendly_name,
        "uptime_seconds": int(uptime_seconds),
        "uptime_human": uptime_human(uptime_seconds),
        "version": version,
        "cluster_issuers": ",".join(cluster_issuers),
        "js_domain": js_domain,
        "ctl_host": ctl_host,
        "rpc_host": rpc_host,
        "prov_rpc_host": prov_rpc_host or rpc_host,
        "lattice_prefix": lattice,
        "lattice": lattice,
    }


@dataclass(frozen=True, slots=True)
class ActorInstanceInfo:
    """One running instance of an actor, as the inventory lists it."""

    instance_id: str
    revision: int = 0
    annotations: dict[str, str] = field(default_factory=dict)
    image_ref: str = ""
    max_instances: int = 1
    # Our addition (wasmCloud has no such state): why the sandbox stopped running it and
    # until when (RFC 3339); ``scale`` or ``upd`` brings it back sooner.
    quarantined: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """An actor running on this host with its instances."""

    id: str
    image_ref: str
    name: str
    instances: tuple[ActorInstanceInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """A capability provider running on this host (the edge agent runs none so far)."""

    id: str
    contract_id: str
    link_name: str
    image_ref: str = ""
    name: str = ""
    instance_id: str = ""
    revision: int = 0
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostInventory:
    """What runs on this host: the reply to ``get.{host}.inv`` and the heartbeat's source."""

    host_id: str
    issuer: str
    labels: dict[str, str]
    friendly_name: str
    version: str
    uptime_seconds: float
    actors: tuple[ActorInfo, ...] = ()
    providers: tuple[ProviderInfo, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The inventory JSON (OTP fields plus Rust 0.82's version/uptime fields)."""
        return {
            "host_id": self.host_id,
            "issuer": self.issuer,
            "labels": dict(self.labels),
            "friendly_name": self.friendly_name,
            "version": self.version,
            "uptime_seconds": int(self.uptime_seconds),
            "uptime_human": uptime_human(self.uptime_seconds),
            "actors": [
                {
                    "id": a.id,
                    "image_ref": a.image_ref,
                    "name": a.name,
                    "instances": [
                        {
                            "annotations": dict(i.annotations),
                            "instance_id": i.instance_id,
                            "revision": i.revision,
                            "image_ref": i.image_ref or a.image_ref,
                            "max_instances": i.max_instances,
                        }
                        | ({"quarantined": dict(i.quarantined)} if i.quarantined else {})
                        for i in a.instances
                    ],
                }
                for a in self.actors
            ],
            "providers": [
                {
                    "id": p.id,
                    "image_ref": p.image_ref,
                    "contract_id": p.contract_id,
                    "link_name": p.link_name,
                    "name": p.name,
                    "instance_id": p.instance_id,
                    "annotations": dict(p.annotations),
                    "revision": p.revision,
                }
                for p in self.providers
            ],
        }


def claims_entry(claims: ActorClaims) -> dict[str, str]:
    """One ``get.claims`` entry, all strings, lists comma-joined (OTP claims manager)."""
    return {
        "call_alias": claims.call_alias or "",
        "iss": claims.issuer,
        "name": claims.name or "",
        "caps": ",".join(claims.caps),
        "rev": str(claims.rev or 0),
        "tags": ",".join(claims.tags),
        "version": claims.ver or "",
        "sub": claims.subject,
        "contract_id": "",  # actors have none; providers (not run here) would
    }


def claims_reply(claims: Iterable[ActorClaims]) -> dict[str, Any]:
    """``{"claims": [entry, …]}``."""
    return {"claims": [claims_entry(c) for c in claims]}


def links_reply(links: Iterable[LinkDefinition]) -> dict[str, Any]:
    """``{"links": [link, …]}``."""
    return {"links": [link.to_json() for link in links]}


def labels_satisfy(labels: Mapping[str, str], constraints: Mapping[str, str]) -> bool:
    """True when every constraint is a label of exactly that value (empty fits all)."""
    return all(labels.get(key) == value for key, value in constraints.items())


def auction_reply(auction: ActorAuction, host_id: str) -> dict[str, Any]:
    """This host's bid: ``{"actor_ref", "constraints", "host_id"}``."""
    return {
        "actor_ref": auction.actor_ref,
        "constraints": dict(auction.constraints),
        "host_id": host_id,
    }
