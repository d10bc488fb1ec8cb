"""The CLI's side of the fleet service: signed admin requests, and the bootstrap credential.

Admin requests travel over the fleet's own hub connection (``hub.creds``) and are signed
with the fleet's admin key, so only someone holding the fleet directory can mint tokens,
list devices or revoke them, whatever else the account's users may publish.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.errors import LatticeEdgeError
from agent.fleet import protocol, subjects
from agent.fleet.fleetdir import FleetDir
from agent.fleet.request import DEFAULT_TIMEOUT_S, request_json
from agent.fleet.subjects import fleet_tag
from agent.identity import jwt
from agent.identity.keys import KeyKind, generate

__all__ = [
    "AdminClient",
    "admin_client",
    "bootstrap_name",
    "discover_js_domain",
    "mint_bootstrap_creds",
]


def bootstrap_name(fleet_id: str) -> str:
    """The ``name`` of a fleet's bootstrap user JWT (its inbox is ``_INBOX_LE.<name>``)."""
    return f"bootstrap-{fleet_id}"


def mint_bootstrap_creds(fleet: FleetDir, expires_in_s: int | None) -> jwt.Creds:
    """A new bootstrap user and its JWT, signed by the fleet's bootstrap signing key."""
    user = generate(KeyKind.USER)
    expires_at = int(time.time()) + expires_in_s if expires_in_s else None
    claims = jwt.scoped_user_claims(
        user.public_key,
        bootstrap_name(fleet.fleet_id),
        issuer_account=fleet.account,
        expires_at=expires_at,
        tags=(fleet_tag(fleet.fleet_id), "lattice-edge-role:bootstrap"),
    )
    return jwt.Creds(jwt=jwt.encode(claims, fleet.bootstrap_signer()), seed=user.seed)


class AdminClient:
    """Signed admin requests to one fleet's service."""

    def __init__(self, nats_client: Any, fleet: FleetDir) -> None:
        self.nats = nats_client
        self.fleet = fleet
        self._signer = fleet.admin_signer()

    async def call(
        self, op: str, args: dict[str, Any] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send ``op`` with ``args``; return the reply."""
        arguments = dict(args or {})
        ts, nonce = int(time.time()), protocol.b64(os.urandom(12))
        message = protocol.admin_message(self.fleet.fleet_id, op, ts, nonce, arguments)
        body = protocol.canonical_json(
            {"ts": ts, "nonce": nonce, "args": arguments,
             "signature": protocol.b64(self._signer.sign(message))}
        )  # fmt: skip
        subject = subjects.admin(self.fleet.fleet_id, op)
        return await request_json(self.nats, subject, body, what=op, timeout=timeout)


@contextlib.asynccontextmanager
async def admin_client(fleet: FleetDir) -> AsyncIterator[AdminClient]:
    """Connect to the hub with the fleet's credentials for admin requests."""
    from agent.lattice.client import connect

    async with connect(fleet.hub_urls[0], lattice=fleet.lattice, creds=str(fleet.creds)) as client:
        yield AdminClient(client.nats, fleet)


async def discover_js_domain(url: str, creds: Path) -> str:
    """The hub's JetStream domain, asked with the fleet's credentials."""
    import nats.errors
    import nats.js.errors

    from agent.errors import FleetDirError
    from agent.lattice.client import connect

    try:
        async with connect(url, creds=str(creds)) as client:
            info = await client.nats.jetstream().account_info()
    except (LatticeEdgeError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise FleetDirError(
            f"cannot ask the hub at {url} for its JetStream domain ({exc}); pass --js-domain"
        ) from exc
    domain = getattr(info, "domain", None)
    if not domain:
        raise FleetDirError(
            f"the hub at {url} has no JetStream domain; give it one (docs/fleet.md)"
        )
    return str(domain)
