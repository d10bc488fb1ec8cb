"""NATS subjects of the wasmCloud 0.x lattice: builders for every subject we serve or publish,
and a parser for incoming control subjects. Pure, no I/O.

Control subjects are ``{prefix}.{lattice}.…`` with ``prefix`` = ``wasmbus.ctl`` by default
(wasmCloud's ``WASMCLOUD_CTL_TOPIC_PREFIX``); events go to ``wasmbus.evt.{lattice}`` (and,
as Rust hosts 0.82 also do, ``wasmbus.evt.{lattice}.{type}``), invocation results to
``wasmbus.rpcevt.{lattice}``, and RPC to ``wasmbus.rpc.{lattice}.{actor}`` or
``wasmbus.rpc.{lattice}.{provider}.{link_name}``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.errors import LatticeError

__all__ = [
    "DEFAULT_CTL_PREFIX",
    "DEFAULT_LATTICE",
    "ControlKind",
    "ControlSubject",
    "Subscription",
    "actor_rpc",
    "auction_actor",
    "command",
    "control_subscriptions",
    "event",
    "events",
    "get_claims",
    "get_inventory",
    "get_links",
    "linkdefs_del",
    "linkdefs_put",
    "parse_control_subject",
    "ping_hosts",
    "provider_rpc",
    "rpc_events",
]

DEFAULT_CTL_PREFIX = "wasmbus.ctl"
DEFAULT_LATTICE = "default"
_EVT = "wasmbus.evt"
_RPCEVT = "wasmbus.rpcevt"
_RPC = "wasmbus.rpc"
_MAX_TOKEN = 256
_FORBIDDEN = frozenset(".*> \t\r\n\x00")


class ControlKind(enum.Enum):
    """What a control subject asks for; ``UNKNOWN`` for anything we do not serve."""

    PING_HOSTS = "ping.hosts"
    GET_INVENTORY = "get.inv"
    GET_CLAIMS = "get.claims"
    GET_LINKS = "get.links"
    LAUNCH_ACTOR = "cmd.la"
    STOP_ACTOR = "cmd.sa"
    SCALE_ACTOR = "cmd.scale"
    STOP_HOST = "cmd.stop"
    UPDATE_ACTOR = "cmd.upd"
    AUCTION_ACTOR = "auction.actor"
    LINKDEFS_PUT = "linkdefs.put"
    LINKDEFS_DEL = "linkdefs.del"
    UNKNOWN = "unknown"


# the last token of ``cmd.{host}.<op>`` for each command we serve
_COMMANDS = {
    "la": ControlKind.LAUNCH_ACTOR,
    "sa": ControlKind.STOP_ACTOR,  # "stop actor" in wash and both hosts
    "scale": ControlKind.SCALE_ACTOR,
    "stop": ControlKind.STOP_HOST,
    "upd": ControlKind.UPDATE_ACTOR,
}
_FIXED = {
    ("ping", "hosts"): ControlKind.PING_HOSTS,
    ("get", "claims"): ControlKind.GET_CLAIMS,
    ("get", "links"): ControlKind.GET_LINKS,
    ("auction", "actor"): ControlKind.AUCTION_ACTOR,
    ("linkdefs", "put"): ControlKind.LINKDEFS_PUT,
    ("linkdefs", "del"): ControlKind.LINKDEFS_DEL,
}


@dataclass(frozen=True, slots=True)
class ControlSubject:
    """A parsed control subject.

    ``host_id`` is the host token of ``get.{host}.inv`` and ``cmd.{host}.…`` subjects (also
    for commands we do not serve, so the server can tell whether an unknown command was
    addressed to it), else None.
    """

    kind: ControlKind
    host_id: str | None = None


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subject to subscribe to, with the queue group wasmCloud hosts use (None = plain)."""

    subject: str
    queue: str | None = None


def _token(value: str, what: str) -> str:
    """``value`` if it is one NATS subject token; LatticeError naming ``what`` otherwise."""
    if not isinstance(value, str) or not value:
        raise LatticeError(f"{what} must be a non-empty string")
    if len(value) > _MAX_TOKEN:
        raise LatticeError(f"{what} is longer than {_MAX_TOKEN} characters")
    if not _FORBIDDEN.isdisjoint(value):
        # a dot would add tokens, a wildcard would widen a subscription
        raise LatticeError(f"{what} '{value}' must not contain '.', '*', '>' or whitespace")
    return value


def _prefix(prefix: str) -> str:
    tokens = prefix.split(".")
    for token in tokens:
        _token(token, "the control subject prefix")
    return prefix


def _ctl(lattice: str, prefix: str, *rest: str) -> str:
    return ".".join((_prefix(prefix), _token(lattice, "lattice"), *rest))


# --- control interface ------------------------------------------------------------------


def ping_hosts(lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.ping.hosts``: every host answers with its Host record."""
    return _ctl(lattice, prefix, "ping", "hosts")


def get_inventory(lattice: str, host_id: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.get.{host}.inv``: one host's inventory."""
    return _ctl(lattice, prefix, "get", _token(host_id, "host id"), "inv")


def get_claims(lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.get.claims``: the claims of every actor in the lattice."""
    return _ctl(lattice, prefix, "get", "claims")


def get_links(lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.get.links``: every link definition in the lattice."""
    return _ctl(lattice, prefix, "get", "links")


def command(lattice: str, host_id: str, op: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.cmd.{host}.{op}``; ``op`` is ``la``, ``sa``, ``scale``, ``stop``
    or ``upd`` (others are built too, for tests of unsupported commands)."""
    return _ctl(lattice, prefix, "cmd", _token(host_id, "host id"), _token(op, "command"))


def auction_actor(lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.auction.actor``: hosts whose labels fit the constraints bid."""
    return _ctl(lattice, prefix, "auction", "actor")


def linkdefs_put(lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.linkdefs.put``: publish a link definition."""
    return _ctl(lattice, prefix, "linkdefs", "put")


def linkdefs_del(lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX) -> str:
    """``{prefix}.{lattice}.linkdefs.del``: delete a link definition."""
    return _ctl(lattice, prefix, "linkdefs", "del")


def control_subscriptions(
    lattice: str, host_id: str, *, prefix: str = DEFAULT_CTL_PREFIX
) -> tuple[Subscription, ...]:
    """Everything a host subscribes to on the control interface.

    Per-host and broadcast subjects are plain subscriptions; lattice-wide queries
    (claims, links) and link definition changes are served by one host of a queue group,
    named ``{prefix}.{lattice}`` as the OTP host names it (Rust 0.82 used
    ``{prefix}.{lattice}.get`` for the queries; the group only matters between hosts that
    share it, and every host gives the same answer).
    """
    host = _token(host_id, "host id")
    group = _ctl(lattice, prefix)
    return (
        Subscription(ping_hosts(lattice, prefix=prefix)),
        Subscription(get_inventory(lattice, host, prefix=prefix)),
        Subscription(_ctl(lattice, prefix, "cmd", host, "*")),
        Subscription(auction_actor(lattice, prefix=prefix)),
        Subscription(get_claims(lattice, prefix=prefix), group),
        Subscription(get_links(lattice, prefix=prefix), group),
        Subscription(linkdefs_put(lattice, prefix=prefix), group),
        Subscription(linkdefs_del(lattice, prefix=prefix), group),
    )


def parse_control_subject(
    subject: str, lattice: str, *, prefix: str = DEFAULT_CTL_PREFIX
) -> ControlSubject:
    """Classify an incoming control subject; never raises.

    Anything outside ``{prefix}.{lattice}.`` or not among the subjects we serve yields
    ``ControlKind.UNKNOWN`` (the server answers it with ``unsupported subject``).
    """
    head = f"{prefix}.{lattice}."
    if not isinstance(subject, str) or not subject.startswith(head):
        return ControlSubject(ControlKind.UNKNOWN)
    tokens = tuple(subject[len(head) :].split("."))
    if any(not t for t in tokens):
        return ControlSubject(ControlKind.UNKNOWN)
    if tokens in _FIXED:
        return ControlSubject(_FIXED[tokens])
    if len(tokens) == 3 and tokens[0] == "get" and tokens[2] == "inv":
        return ControlSubject(ControlKind.GET_INVENTORY, tokens[1])
    if len(tokens) == 3 and tokens[0] == "cmd":
        return ControlSubject(_COMMANDS.get(tokens[2], ControlKind.UNKNOWN), tokens[1])
    return ControlSubject(ControlKind.UNKNOWN)


# --- events and RPC -------------------------------------------------------------------


def events(lattice: str) -> str:
    """``wasmbus.evt.{lattice}``: where every CloudEvent is published."""
    return f"{_EVT}.{_token(lattice, 'lattice')}"


def event(lattice: str, event_type: str) -> str:
    """``wasmbus.evt.{lattice}.{type}`` for the short type name (``host_heartbeat``).

    The full CloudEvents type (``com.wasmcloud.lattice.host_heartbeat``) is accepted too.
    """
    name = event_type.rsplit(".", 1)[-1] if isinstance(event_type, str) else event_type
    return f"{events(lattice)}.{_token(name, 'event type')}"


def rpc_events(lattice: str) -> str:
    """``wasmbus.rpcevt.{lattice}``: invocation_succeeded / invocation_failed events."""
    return f"{_RPCEVT}.{_token(lattice, 'lattice')}"


def actor_rpc(lattice: str, actor_pk: str) -> str:
    """``wasmbus.rpc.{lattice}.{actor}``: invocations of an actor (also its queue group)."""
    return f"{_RPC}.{_token(lattice, 'lattice')}.{_token(actor_pk, 'actor public key')}"


def provider_rpc(lattice: str, provider_pk: str, link_name: str) -> str:
    """``wasmbus.rpc.{lattice}.{provider}.{link_name}``: invocations of a provider."""
    return (
        f"{_RPC}.{_token(lattice, 'lattice')}.{_token(provider_pk, 'provider public key')}"
        f".{_token(link_name, 'link name')}"
    )


# --- the agent's own subjects (not wasmCloud's) --------------------------------------------


def agent_health(host_id: str) -> str:
    """``lattice-edge.host.{host}.health``: the agent's condition, for ``status``.

    Under ``lattice-edge.``, so anonymous local clients cannot ask (it names paths and
    errors) or answer in the agent's place.
    """
    return f"lattice-edge.host.{_token(host_id, 'host id')}.health"


def agent_reload(host_id: str) -> str:
    """``lattice-edge.host.{host}.reload``: reload the agent's config (``lattice-edge reload``).

    Under ``lattice-edge.``, so only the agent user (the CLI of an operator who can read
    its seed) can ask; the reply reports what changed.
    """
    return f"lattice-edge.host.{_token(host_id, 'host id')}.reload"
