"""Who may use the leaf's local listener, and for what: the ``authorization`` block.

Pure: turns the agent's own user key and the configured local users into the
nats-server ``authorization`` table. Three kinds of local client:

* the **agent user** (an nkey whose seed is in the data dir): the agent itself and the
  CLI of operators who can read that seed. Unrestricted.
* **anonymous** clients (presenting nothing) map, through nats-server's ``no_auth_user``,
  to the user :data:`ANONYMOUS_USER`, which may use application subjects but cannot
  control the host, serve or call actors, touch JetStream's API, the agent's buckets and
  streams, or anything under ``lattice-edge.`` — see :data:`ANONYMOUS_PERMISSIONS`.
* **configured local users** (``[[leaf.local_users]]``): a name with a password file or an
  nkey, and their own allow lists.

Every non-agent user is denied the agent's reply subjects (:data:`AGENT_INBOX_PREFIX`), so
no local process can read the answers the agent receives or inject forged ones. The rules
hold on nats-server 2.9.10 and 2.15 alike; leafnode remotes are not local clients and are
not affected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.leaf.mqtt import MqttListener, connection_types

if TYPE_CHECKING:
    from agent.leaf.render import ConfValue

__all__ = [
    "AGENT_INBOX_PREFIX",
    "ANONYMOUS_PERMISSIONS",
    "ANONYMOUS_USER",
    "LocalAccess",
    "LocalUser",
    "agent_inbox_prefix",
    "authorization_table",
]

ANONYMOUS_USER = "local"
AGENT_INBOX_PREFIX = "_INBOX_LE"

# Subjects no anonymous local client may publish on / subscribe to, and why:
#   wasmbus.>           control, RPC and events of the lattice (forging commands, calls,
#                       replies or events); subscribing to events stays allowed
#   $JS. $KV. $O.       the JetStream API and the agent's buckets (keyvalue data, modules,
#                       the outbox): deleting or rewriting them
#   $SYS. $SRV.         server internals; answering service discovery as someone else
#   lattice-edge.>      the agent's own services (firmware, fleet, telemetry, uplink)
#   _INBOX_LE.>         the agent's reply subjects
_DENY_PUBLISH = ("wasmbus.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>", "lattice-edge.>")
_DENY_SUBSCRIBE = (
    "wasmbus.rpc.>",
    "wasmbus.ctl.>",
    "$JS.>",
    "$KV.>",
    "$O.>",
    "$SYS.>",
    "$SRV.>",
    "lattice-edge.firmware.>",
    "lattice-edge.fleet.>",
)
_INBOX_DENY = (f"{AGENT_INBOX_PREFIX}.>",)

ANONYMOUS_PERMISSIONS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "publish": {"deny": _DENY_PUBLISH + _INBOX_DENY},
    "subscribe": {"deny": _DENY_SUBSCRIBE + _INBOX_DENY},
}


def agent_inbox_prefix(host_id: str) -> str:
    """The agent's reply-subject prefix: ``_INBOX_LE.<host id>`` (fleet templates rely on it)."""
    return f"{AGENT_INBOX_PREFIX}.{host_id}"


@dataclass(frozen=True, slots=True)
class LocalUser:
    """A configured local user: a password or an nkey, and optional allow lists.

    With no allow list a direction gets the anonymous rules; an allow list replaces them
    (the agent's reply subjects stay denied either way).
    """

    name: str
    password: str | None = field(default=None, repr=False)
    nkey: str | None = None
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class LocalAccess:
    """Everything the renderer needs for the local listener's ``authorization``."""

    agent_user: str  # the agent user's public key (U…)
    users: tuple[LocalUser, ...] = ()
    anonymous: bool = True  # map clients presenting nothing to ANONYMOUS_USER


def _direction(allow: Sequence[str] | None, direction: str) -> dict[str, ConfValue]:
    if allow is None:
        return {"deny": list(ANONYMOUS_PERMISSIONS[direction]["deny"])}
    return {"allow": list(allow), "deny": list(_INBOX_DENY)}


def _permissions(user: LocalUser) -> dict[str, ConfValue]:
    return {
        "publish": _direction(user.publish, "publish"),
        "subscribe": _direction(user.subscribe, "subscribe"),
    }


def _limit(entry: dict[str, ConfValue], types: Sequence[str]) -> None:
    if types:
        entry["allowed_connection_types"] = list(types)


def authorization_table(
    access: LocalAccess,
    *,
    mqtt: MqttListener | None = None,
    mqtt_users: Sequence[ConfValue] = (),
) -> dict[str, ConfValue]:
    """The ``authorization`` block (and ``no_auth_user``) for the leaf's config.

    With an MQTT listener, ``mqtt_users`` (:func:`agent.leaf.mqtt.mqtt_user_entries`) are
    added and the other users limited to NATS connections, so an MQTT client presenting
    nothing is not let in as the anonymous user (see :mod:`agent.leaf.mqtt`).
    """
    users: list[ConfValue] = [{"nkey": access.agent_user}]
    if access.anonymous:
        # No password (nats-server checks one even for no_auth_user): logging in as this
        # user by name gets exactly what presenting nothing gets.
        anonymous: dict[str, ConfValue] = {
            "user": ANONYMOUS_USER,
            "permissions": _permissions(LocalUser(ANONYMOUS_USER)),
        }
        _limit(anonymous, connection_types(mqtt, anonymous_user=True))
        users.append(anonymous)
    for user in access.users:
        entry: dict[str, ConfValue] = (
            {"nkey": user.nkey}
            if user.nkey is not None
            else {"user": user.name, "password": user.password or ""}
        )
        entry["permissions"] = _permissions(user)
        _limit(entry, connection_types(mqtt, anonymous_user=False))
        users.append(entry)
    users.extend(mqtt_users)
    table: dict[str, ConfValue] = {"authorization": {"users": users}}
    if access.anonymous:
        table["no_auth_user"] = ANONYMOUS_USER
    return table
