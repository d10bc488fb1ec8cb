"""The permission templates of the fleet's two scoped signing keys. Pure.

The account JWT carries them as ``signing_keys`` entries (``kind: user_scope``); every user
JWT signed by one of those keys gets the template's permissions from the server, with
``{{name()}}`` replaced by the JWT's ``name`` — for a device, its host key. Each entry is
explained in ``docs/fleet.md``; the tests check each one against a real nats-server.

Why replies go to ``_INBOX.>`` rather than through ``allow_responses``: measured on
nats-server 2.9.10 and 2.15 leaf nodes, the device's own leaf drops the host's replies to
hub-side requests when only ``resp`` permits them (the hub tells the leaf its publish
allow-list, not its response permission), so a device publishes replies to ``_INBOX.>``.
It cannot read them: its subscriptions are confined to ``_INBOX_LE.{{name()}}.>``.
"""

from __future__ import annotations

import shlex
from typing import Any

from agent.fleet import subjects

__all__ = [
    "BOOTSTRAP_ROLE",
    "DEVICE_ROLE",
    "NAME",
    "bootstrap_template",
    "device_template",
    "nsc_commands",
    "object_store_read",
]

DEVICE_ROLE = "lattice-edge-device"
BOOTSTRAP_ROLE = "lattice-edge-bootstrap"
NAME = "{{name()}}"
UNLIMITED = -1


def object_store_read(api_prefix: str, bucket: str) -> list[str]:
    """The JetStream API subjects nats-py needs to read an object of ``bucket``.

    Measured with a tracing hub: stream info, the stream-name lookup of the chunk
    subscription, the last-message get of the object's metadata, and the ordered consumer
    that delivers its chunks (with its flow-control replies).
    """
    stream = f"OBJ_{bucket}"
    return [
        f"{api_prefix}.STREAM.INFO.{stream}",
        f"{api_prefix}.STREAM.NAMES",
        f"{api_prefix}.STREAM.MSG.GET.{stream}",
        f"{api_prefix}.CONSUMER.CREATE.{stream}",
        f"{api_prefix}.CONSUMER.CREATE.{stream}.>",
    ]


def device_template(*, lattice: str, fleet: str, js_domain: str) -> dict[str, Any]:
    """A device's permissions: a wasmCloud 0.x host on ``lattice`` named by its host key."""
    ctl = f"wasmbus.ctl.{lattice}"
    bucket = subjects.actor_bucket(fleet)
    service = subjects.prefix(fleet)
    publish = [
        f"wasmbus.evt.{lattice}",
        f"wasmbus.evt.{lattice}.>",
        f"wasmbus.rpcevt.{lattice}",
        f"wasmbus.rpc.{lattice}.>",
        "_INBOX.>",
        f"{service}.device.{NAME}.>",
        f"lattice-edge.uplink.{NAME}.>",
        f"lattice-edge.telemetry.{NAME}.>",
        *object_store_read(f"$JS.{js_domain}.API", bucket),
        *object_store_read("$JS.API", bucket),
        f"$JS.FC.OBJ_{bucket}.>",
    ]
    subscribe = [
        f"{ctl}.ping.hosts",
        f"{ctl}.auction.actor",
        f"{ctl}.get.claims",
        f"{ctl}.get.links",
        f"{ctl}.linkdefs.put",
        f"{ctl}.linkdefs.del",
        f"{ctl}.get.{NAME}.inv",
        f"{ctl}.cmd.{NAME}.*",
        f"wasmbus.rpc.{lattice}.>",
        f"{subjects.inbox_prefix(NAME)}.>",
    ]
    return {
        "pub": {
            "allow": publish,
            "deny": [f"{service}.admin.>", f"{service}.enroll.>", "$KV.>", "$O.>"],
        },
        # Only a deny that can never meet the device's own traffic: a leaf applies the
        # subscribe deny list to what it sends upstream too (measured: denying
        # lattice-edge.fleet.> here silently dropped the device's own renewals).
        "sub": {"allow": subscribe, "deny": ["$KV.>"]},
        "subs": UNLIMITED,
        "data": UNLIMITED,
        "payload": UNLIMITED,
    }


def bootstrap_template(*, fleet: str) -> dict[str, Any]:
    """The bootstrap credential's permissions: ask for a nonce, spend a token, read replies."""
    return {
        "pub": {"allow": [subjects.enroll_challenge(fleet), subjects.enroll_complete(fleet)]},
        "sub": {"allow": [f"{subjects.inbox_prefix(NAME)}.>"]},
        "subs": 8,
        "data": UNLIMITED,
        "payload": 64 * 1024,
        "allowed_connection_types": ["STANDARD", "WEBSOCKET"],
    }


def nsc_commands(entries: list[dict[str, Any]]) -> list[str]:
    """The ``nsc`` commands that add ``entries`` to the account named ``$FLEET_ACCOUNT``."""
    commands: list[str] = []
    for entry in entries:
        key, template = entry["key"], entry["template"]
        commands.append(f'nsc edit account --name "$FLEET_ACCOUNT" --sk {key}')
        parts = [
            'nsc edit signing-key --account "$FLEET_ACCOUNT"',
            f"--sk {key}",
            f"--role {entry['role']}",
        ]
        for flag, field, kind in (
            ("--allow-pub", "pub", "allow"),
            ("--deny-pub", "pub", "deny"),
            ("--allow-sub", "sub", "allow"),
            ("--deny-sub", "sub", "deny"),
        ):
            values = template.get(field, {}).get(kind) or []
            if values:
                parts.append(f"{flag} {shlex.quote(','.join(values))}")
        for flag, field in (("--subs", "subs"), ("--payload", "payload")):
            if template.get(field, UNLIMITED) != UNLIMITED:
                parts.append(f"{flag} {template[field]}")
        if template.get("allowed_connection_types"):
            parts.append(f"--conn-type {','.join(template['allowed_connection_types'])}")
        commands.append(" ".join(parts))
    commands.append('nsc push --account "$FLEET_ACCOUNT"')
    return commands
