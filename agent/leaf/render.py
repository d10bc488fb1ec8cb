"""Rendering the leaf node's nats-server configuration for the server version found.

Pure: takes settings and a version, returns text. nats-server 2.9.10 (Debian bookworm,
the only armhf build) refuses to start on keys it does not know, so the keys added in 2.10
(leafnode ``compression``, ``first_info_timeout``, JetStream ``sync_interval``, TLS
``handshake_first``) are written only for servers that understand them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import HostPort, UpstreamSettings
from agent.errors import LeafConfigError
from agent.leaf.access import LocalAccess, authorization_table
from agent.leaf.mqtt import MqttListener, mqtt_block, mqtt_user_entries

__all__ = ["LeafPlan", "RenderedConfig", "render", "to_conf"]

Version = tuple[int, int, int]
_V2_10: Version = (2, 10, 0)
_V2_11: Version = (2, 11, 0)  # leafnodes.reconnect takes a duration (before: whole seconds)

ConfValue = str | int | bool | Sequence["ConfValue"] | Mapping[str, "ConfValue"]


@dataclass(frozen=True, slots=True)
class LeafPlan:
    """Everything the renderer needs, already resolved by the host."""

    server_name: str
    listen: HostPort
    monitor: HostPort
    max_payload: int
    jetstream: bool
    jetstream_domain: str
    store_dir: Path
    jetstream_max_memory_mb: int
    jetstream_max_file_mb: int
    sync_interval: str | None = None
    upstream: UpstreamSettings | None = None
    access: LocalAccess | None = None  # None: the local listener takes anyone (tests only)
    mqtt: MqttListener | None = None  # nats-server's MQTT listener for networked MCUs
    # subjects the leaf must not take from the hub: what store-and-forward captures, so a
    # device's outbox never fills with what others publish (see docs/store-and-forward.md)
    deny_imports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    """The config text and what was left out for this server version."""

    text: str
    warnings: tuple[str, ...] = field(default=())


def render(plan: LeafPlan, version: Version) -> RenderedConfig:
    """Render ``plan`` as a nats-server config understood by ``version``."""
    modern = version >= _V2_10
    warnings: list[str] = []
    conf: dict[str, ConfValue] = {
        "server_name": plan.server_name,
        "listen": str(plan.listen),
        "http": str(plan.monitor),
        "max_payload": plan.max_payload,
        # 30 s is the minimum the server accepts; with no clients left (the agent drains
        # first) it exits after the grace period, so shutdown stays quick.
        "lame_duck_duration": "30s",
        "lame_duck_grace_period": "1s",
    }
    if plan.mqtt is not None and not plan.jetstream:
        raise LeafConfigError("leaf.mqtt_listen needs JetStream (leaf.jetstream = true)")
    if plan.mqtt is not None and plan.mqtt.users and plan.access is None:
        raise LeafConfigError("MQTT users need the local listener's authorization")
    if plan.access is not None:
        mqtt_users = mqtt_user_entries(plan.mqtt, version) if plan.mqtt else []
        conf.update(authorization_table(plan.access, mqtt=plan.mqtt, mqtt_users=mqtt_users))
    if plan.mqtt is not None:
        conf["mqtt"] = mqtt_block(plan.mqtt)
    if plan.jetstream:
        jetstream: dict[str, ConfValue] = {
            "store_dir": str(plan.store_dir),
            "domain": plan.jetstream_domain,
            "max_memory_store": plan.jetstream_max_memory_mb * 1024 * 1024,
            "max_file_store": plan.jetstream_max_file_mb * 1024 * 1024,
        }
        if plan.sync_interval:
            if modern:
                jetstream["sync_interval"] = plan.sync_interval
            else:
                warnings.append(_unsupported("leaf.sync_interval", version))
        conf["jetstream"] = jetstream
    if plan.upstream is not None:
        remote = _remote(plan.upstream, modern, version, warnings)
        if plan.deny_imports:
            remote["deny_imports"] = list(plan.deny_imports)
        leafnodes: dict[str, ConfValue] = {"remotes": [remote]}
        if version >= _V2_11:
            # Retry a lost uplink quickly (the server adds up to as much again in jitter):
            # forwarding resumes when the link does. Older servers retry every second.
            leafnodes["reconnect"] = f"{int(plan.upstream.reconnect_interval_s * 1000)}ms"
        conf["leafnodes"] = leafnodes
    return RenderedConfig(text=to_conf(conf), warnings=tuple(warnings))


def _remote(
    upstream: UpstreamSettings, modern: bool, version: Version, warnings: list[str]
) -> dict[str, ConfValue]:
    remote: dict[str, ConfValue] = {"urls": list(upstream.urls)}
    if upstream.credentials is not None:
        remote["credentials"] = str(upstream.credentials)
    tls: dict[str, ConfValue] = {}
    if upstream.tls_ca_file:
        tls["ca_file"] = str(upstream.tls_ca_file)
    if upstream.tls_cert_file and upstream.tls_key_file:
        tls["cert_file"] = str(upstream.tls_cert_file)
        tls["key_file"] = str(upstream.tls_key_file)
    if upstream.tls_handshake_first:
        if not modern:
            raise LeafConfigError(
                f"upstream.tls_handshake_first needs nats-server 2.10 or newer, "
                f"found {_dotted(version)}"
            )
        tls["handshake_first"] = True
    if tls:
        remote["tls"] = tls
    if modern:
        # Bad uplinks: compress when the link is slow, and give a slow hub time to greet.
        remote["compression"] = "s2_auto"
        remote["first_info_timeout"] = "5s"
    return remote


def _dotted(version: Version) -> str:
    return ".".join(str(part) for part in version)


def _unsupported(key: str, version: Version) -> str:
    return f"{key} is ignored: nats-server {_dotted(version)} does not know it (needs 2.10+)"


def to_conf(value: Mapping[str, ConfValue], indent: int = 0) -> str:
    """Serialise a mapping in nats-server's config syntax (strings JSON-quoted)."""
    pad = "  " * indent
    lines = [f"{pad}{key}: {_value(item, indent)}" for key, item in value.items()]
    return "\n".join(lines) + ("\n" if indent == 0 else "")


def _value(value: ConfValue, indent: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        inner = to_conf(value, indent + 1)
        return "{\n" + inner + "\n" + "  " * indent + "}"
    items = ", ".join(_value(item, indent) for item in value)
    return f"[{items}]"
