"""nats-server's own MQTT listener on the leaf, for networked MCUs (ESP32 and friends).

Pure: topic ↔ subject mapping, and the ``mqtt`` block and MQTT users of the leaf's
config. Facts it relies on, checked against nats-server 2.9.10 and 2.15 by
``tests/integration/test_mqtt.py``:

* MQTT needs JetStream and a ``server_name`` (the leaf has both); MQTT 3.1.1 only; QoS 0
  and 1 on 2.9, QoS 2 from 2.10.
* Topics map to subjects ``/`` → ``.``, ``.`` → ``//``, ``+`` → ``*``, ``#`` → ``>``
  (a filter ``a/#`` also matches ``a`` itself).
* An MQTT client presenting no credentials is mapped to the server's global
  ``no_auth_user`` — the leaf's anonymous ``local`` user — unless that user's
  ``allowed_connection_types`` leaves out ``MQTT``. So, with MQTT on, every user but the
  MCU users is limited to ``STANDARD``/``WEBSOCKET`` and each MCU user to ``MQTT``: an
  anonymous MQTT client is refused (``Not authorized``), an MCU password is no NATS login,
  and an anonymous client gets the ``local`` user's rights only where the config allows it
  (loopback, no MCU users, ``allow_anonymous``).
* An MCU user's permissions are allow lists of its own subjects; a publish outside them is
  dropped by the server (a "Publish Violation"; QoS 1 publishes are still acknowledged),
  a subscription outside them is refused. On 2.9 a QoS 1 subscription also needs
  ``$MQTT.sub.>`` (the JetStream consumer's delivery subject); 2.10+ allows it itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from agent.leaf.render import ConfValue

__all__ = [
    "DEFAULT_TOPICS",
    "MqttListener",
    "MqttUser",
    "filter_to_subjects",
    "is_loopback",
    "mqtt_block",
    "mqtt_status",
    "mqtt_user_entries",
    "topic_to_subject",
]

DEFAULT_TOPICS: Final = ("mcu/{name}/#",)
NATS_ONLY: Final = ("STANDARD", "WEBSOCKET")
MQTT_ONLY: Final = ("MQTT",)
_QOS1_DELIVERY_29: Final = "$MQTT.sub.>"

Version = tuple[int, int, int]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _convert(topic: str, *, wildcards: bool) -> str:
    if not topic:
        raise ValueError("an MQTT topic cannot be empty")
    if topic.startswith("$"):
        raise ValueError(f"MQTT topic {topic!r} is reserved ('$')")
    levels = topic.split("/")
    tokens: list[str] = []
    for index, level in enumerate(levels):
        if any(c.isspace() or ord(c) < 0x20 for c in level):
            raise ValueError(f"MQTT topic {topic!r} contains whitespace or control characters")
        if level in ("+", "#"):
            if not wildcards:
                raise ValueError(f"MQTT topic {topic!r}: wildcards are for filters only")
            if level == "#" and index != len(levels) - 1:
                raise ValueError(f"MQTT topic filter {topic!r}: '#' must be the last level")
            tokens.append("*" if level == "+" else ">")
            continue
        if "+" in level or "#" in level:
            raise ValueError(f"MQTT topic {topic!r}: wildcards must be whole levels")
        if "*" in level or ">" in level:
            raise ValueError(f"MQTT topic {topic!r} contains '*' or '>'")
        # nats-server writes an empty level (leading, trailing or double '/') as '/'
        # and a '.' inside a level as '//'.
        tokens.append(level.replace(".", "//") if level else "/")
    return ".".join(tokens)


def topic_to_subject(topic: str) -> str:
    """The NATS subject an MQTT publish to ``topic`` arrives on (``a/b`` → ``a.b``)."""
    return _convert(topic, wildcards=False)


def filter_to_subjects(topic_filter: str) -> tuple[str, ...]:
    """The NATS subjects an MQTT topic filter covers (``mcu/x/#`` → ``mcu.x``, ``mcu.x.>``)."""
    subject = _convert(topic_filter, wildcards=True)
    if subject == ">":
        raise ValueError("MQTT topic filter '#' would cover every subject")
    if subject.endswith(".>"):
        return (subject[:-2], subject)  # MQTT's '#' matches the parent level too
    return (subject,)


@dataclass(frozen=True, slots=True)
class MqttUser:
    """One MCU: its user name, password (or token) and the subjects its topics cover."""

    name: str
    password: str = field(repr=False)
    subjects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MqttListener:
    """The MQTT listener: where, for whom, and whether anonymous clients get in."""

    listen: str  # host:port
    users: tuple[MqttUser, ...] = ()
    anonymous: bool = False  # anonymous MQTT clients get the anonymous local user's rights


def mqtt_block(listener: MqttListener) -> dict[str, ConfValue]:
    """The ``mqtt`` table (the same keys on 2.9.10 and 2.15)."""
    return {"listen": listener.listen}


def mqtt_user_entries(listener: MqttListener, version: Version) -> list[ConfValue]:
    """The MCU users for the ``authorization`` block's ``users`` list."""
    entries: list[ConfValue] = []
    for user in listener.users:
        subscribe = list(user.subjects)
        if version < (2, 10, 0):
            subscribe.append(_QOS1_DELIVERY_29)
        permissions: Mapping[str, ConfValue] = {
            "publish": {"allow": list(user.subjects)},
            "subscribe": {"allow": subscribe},
        }
        entries.append(
            {
                "user": user.name,
                "password": user.password,
                "permissions": dict(permissions),
                "allowed_connection_types": list(MQTT_ONLY),
            }
        )
    return entries


def connection_types(listener: MqttListener | None, *, anonymous_user: bool) -> Sequence[str]:
    """``allowed_connection_types`` for a non-MCU user (empty: leave the key out)."""
    if listener is None:
        return ()
    if anonymous_user and listener.anonymous:
        return (*NATS_ONLY, *MQTT_ONLY)
    return NATS_ONLY


def mqtt_status(listen: str, connz: object) -> dict[str, object]:
    """``status``'s MQTT section from the leaf's ``/connz?auth=1``: who is connected.

    MQTT connections are the ones carrying ``mqtt_client`` (their MQTT client id); the
    field is there on 2.9.10 and 2.15 alike. ``total`` counts the whole listing, so a
    page limit shows as ``total`` larger than the clients listed.
    """
    rows = connz.get("connections") if isinstance(connz, dict) else None
    clients = [
        {
            "client_id": row.get("mqtt_client"),
            "user": row.get("authorized_user"),
            "address": f"{row.get('ip')}:{row.get('port')}",
            "in_msgs": row.get("in_msgs"),
            "out_msgs": row.get("out_msgs"),
        }
        for row in (rows if isinstance(rows, list) else [])
        if isinstance(row, dict) and row.get("mqtt_client")
    ]
    return {"listen": listen, "connections": len(clients), "clients": clients}
