"""Subjects and bucket names of one fleet. Pure.

Everything a fleet's service serves lives under ``lattice-edge.fleet.{fleet}``, where
``{fleet}`` is the fleet id (twelve characters of its device signing key), so two fleets in
one account never share a queue group, and the scoped templates can name them exactly::

    lattice-edge.fleet.{fleet}.enroll.challenge     bootstrap role: ask for a nonce
    lattice-edge.fleet.{fleet}.enroll.complete      bootstrap role: spend a token
    lattice-edge.fleet.{fleet}.device.{host}.renew  device role: only its own host key
    lattice-edge.fleet.{fleet}.admin.{op}           fleet owners only (signed requests)

A client whose JWT is named ``N`` receives its replies on ``_INBOX_LE.N.>``: the templates let
a device subscribe only to its own inbox, never to ``_INBOX.>``, where it could read the
replies meant for others (enrollment tokens from ``admin.token.create`` among them).
"""

from __future__ import annotations

import re

from agent.errors import FleetRequestError

__all__ = [
    "ADMIN_OPS",
    "SERVICE_NAME",
    "actor_bucket",
    "admin",
    "enroll_challenge",
    "enroll_complete",
    "fleet_tag",
    "inbox_prefix",
    "kv_bucket",
    "prefix",
    "renew",
]

SERVICE_NAME = "lattice-edge-fleet"
ADMIN_OPS = (
    "token.create",
    "token.list",
    "token.revoke",
    "devices",
    "revoke",
    "deploy",
    "undeploy",
    "deployments",
    "status",
)
_FLEET_ID = re.compile(r"^[A-Z2-7]{12}$")
_HOST = re.compile(r"^N[A-Z2-7]{55}$")


def check_fleet_id(fleet: str) -> str:
    """``fleet`` if it is a fleet id (12 base32 characters); FleetRequestError otherwise."""
    if not isinstance(fleet, str) or not _FLEET_ID.match(fleet):
        raise FleetRequestError(f"'{fleet}' is not a fleet id (12 letters A-Z and digits 2-7)")
    return fleet


def prefix(fleet: str) -> str:
    """``lattice-edge.fleet.{fleet}``."""
    return f"lattice-edge.fleet.{check_fleet_id(fleet)}"


def enroll_challenge(fleet: str) -> str:
    """Where an enrolling device asks for a nonce."""
    return f"{prefix(fleet)}.enroll.challenge"


def enroll_complete(fleet: str) -> str:
    """Where an enrolling device spends its token."""
    return f"{prefix(fleet)}.enroll.complete"


def renew(fleet: str, host_id: str) -> str:
    """Where the device ``host_id`` renews its credentials (its template allows only this)."""
    if not _HOST.match(host_id):
        raise FleetRequestError(f"'{host_id}' is not a host key")
    return f"{prefix(fleet)}.device.{host_id}.renew"


def admin(fleet: str, op: str) -> str:
    """An admin operation's subject."""
    if op not in ADMIN_OPS:
        raise FleetRequestError(f"unknown admin operation '{op}'")
    return f"{prefix(fleet)}.admin.{op}"


def fleet_tag(fleet_id: str) -> str:
    """The tag every user JWT of a fleet carries (lower case, as nsc writes tags)."""
    return f"lattice-edge-fleet:{fleet_id.lower()}"


def inbox_prefix(name: str) -> str:
    """The inbox prefix of a client whose JWT is named ``name``."""
    return f"_INBOX_LE.{name}"


def kv_bucket(fleet: str) -> str:
    """The fleet's KV bucket on the hub (tokens, devices, deployments, rollout state)."""
    return f"LEFLEET_{check_fleet_id(fleet)}"


def actor_bucket(fleet: str) -> str:
    """The object store bucket on the hub that holds the fleet's actor modules."""
    return f"LEFLEET_{check_fleet_id(fleet)}_ACTORS"
