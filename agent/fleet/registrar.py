"""Enrollment, renewal, tokens and revocation: the decisions behind the fleet's endpoints.

Each method takes a request body already read off the wire and returns the reply as a
dict, or raises :class:`~agent.errors.FleetRequestError` with the code and reason the
device or the CLI acts on. State lives in :class:`~agent.fleet.store.FleetStore`; the one
write that must happen exactly once — spending a token — is an ``update`` against the
revision read, so two ``fleet serve`` processes can never both spend it.

Crash safety: the token is spent first, recording the host and user key it was spent for;
the device record and the JWT follow. A service killed in between has spent the token for
exactly that device, so when the device retries with the same token and the same keys
(``lattice-edge enroll`` keeps its pending key until it succeeds) enrollment completes;
anyone else gets "already used".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from agent.errors import FleetRequestError
from agent.fleet import protocol, subjects
from agent.fleet.fleetdir import FleetDir
from agent.fleet.store import Conflict, FleetStore, Record
from agent.fleet.subjects import fleet_tag
from agent.fleet.tokens import check_token_id, new_token, parse_token
from agent.identity import jwt
from agent.identity.keys import KeyKind

__all__ = ["FAILPOINT_ENV", "NONCE_TTL_S", "Registrar", "failpoint"]

logger = logging.getLogger("lattice_edge.fleet")

NONCE_TTL_S = 120
MAX_TOKENS_PER_REQUEST = 1000
MAX_TOKEN_LIFETIME_S = 365 * 86400
FAILPOINT_ENV = "LATTICE_EDGE_TEST_FLEET_FAILPOINT"


async def failpoint(name: str) -> None:
    """Test hook for crash-safety tests: park here so the test can kill -9 the service at
    exactly this step. Only the test suite's own variable (``LATTICE_EDGE_TEST_…``) sets it."""
    if os.environ.get(FAILPOINT_ENV) == name:
        logger.warning("failpoint %s reached; waiting to be killed", name)
        await asyncio.sleep(3600)


def _refused(message: str, reason: str, code: int = 403) -> FleetRequestError:
    return FleetRequestError(message, code=code, reason=reason)


class Registrar:
    """The fleet's enrollment authority, bound to its store and signing key."""

    def __init__(
        self, fleet: FleetDir, store: FleetStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.clock = clock
        self._signer = fleet.device_signer()

    # --- nonces ---------------------------------------------------------------------------

    def challenge(self, body: bytes) -> dict[str, Any]:
        """A nonce for one token, signed by the service so any instance can check it."""
        request = protocol.parse_challenge(body)
        token_id = check_token_id(request.token_id)
        expires = int(self.clock()) + NONCE_TTL_S
        claims = {
            "f": self.fleet.fleet_id,
            "t": token_id,
            "e": expires,
            "r": protocol.b64(os.urandom(16)),
        }
        payload = protocol.b64(protocol.canonical_json(claims))
        signature = protocol.b64(self._signer.sign(payload.encode()))
        return {"nonce": f"{payload}.{signature}", "expires_at": expires}

    def _check_nonce(self, nonce: str, token_id: str) -> None:
        payload, _, signature = nonce.partition(".")
        try:
            raw_sig = protocol.b64decode(signature)
            claims = json.loads(protocol.b64decode(payload))
        except ValueError:
            raise _refused(
                "the nonce is malformed; ask for a new challenge", "nonce-invalid"
            ) from None
        if not protocol.signature_ok(self.fleet.device_key, payload.encode(), raw_sig):
            raise _refused("the nonce was not issued by this fleet", "nonce-invalid")
        if not isinstance(claims, dict) or claims.get("f") != self.fleet.fleet_id:
            raise _refused("the nonce belongs to another fleet", "nonce-invalid")
        if claims.get("t") != token_id:
            raise _refused("the nonce was issued for another token", "nonce-invalid")
        expires = claims.get("e")
        if not isinstance(expires, int) or expires < self.clock():
            raise _refused("the nonce has expired; ask for a new challenge", "nonce-expired")

    # --- enrollment ------------------------------------------------------------------------

    async def enroll(self, body: bytes) -> dict[str, Any]:
        """Spend a token for a device that proved it holds its user and host keys."""
        request = protocol.parse_enroll(body)
        token = parse_token(request.token)
        if token.fleet != self.fleet.fleet_id:
            raise _refused(
                f"this token belongs to fleet {token.fleet}; this service serves fleet "
                f"{self.fleet.fleet_id}",
                "wrong-fleet",
            )
        self._check_nonce(request.nonce, token.token_id)
        message = protocol.enroll_message(
            self.fleet.fleet_id, request.nonce, token.token_id, request.user_key, request.host_key
        )
        if not protocol.signature_ok(request.user_key, message, request.user_signature):
            raise _refused(
                "the nonce signature does not verify with the user key", "signature-invalid"
            )
        if not protocol.signature_ok(request.host_key, message, request.host_signature):
            raise _refused(
                "the nonce signature does not verify with the host key", "signature-invalid"
            )
        now = int(self.clock())
        for _attempt in range(3):
            record = await self.store.get(f"token.{token.token_id}")
            if record is None or not token.matches(str(record.value.get("secret_sha256", ""))):
                raise _refused("the token is not valid for this fleet", "token-invalid")
            value = record.value
            state = value.get("state")
            if state == "revoked":
                raise _refused("the token was revoked; create a new one", "token-revoked")
            if state == "spent":
                if (
                    value.get("host_key") == request.host_key
                    and value.get("user_key") == request.user_key
                ):
                    break  # this very device retrying after a lost reply: finish the job
                raise _refused(
                    f"the token {token.token_id} was already used; create a new token",
                    "token-used",
                    409,
                )
            if int(value.get("expires_at", 0)) < now:
                raise _refused(
                    f"the token {token.token_id} has expired; create a new one",
                    "token-expired",
                    410,
                )
            spent = {**value, "state": "spent", "host_key": request.host_key,
                     "user_key": request.user_key, "spent_at": now}  # fmt: skip
            try:
                await self.store.update(record.key, spent, record.revision)
            except Conflict:
                continue  # someone wrote it meanwhile: look again
            break
        else:
            raise _refused("the token is being used concurrently; try again", "token-busy", 409)
        await failpoint("after-spend")
        labels = {**request.labels, **(value.get("labels") or {})}
        expires_at = now + self.fleet.credential_ttl_s
        await self._save_device(request, token.token_id, labels, now, expires_at)
        user_jwt = self._mint(request.user_key, request.host_key, expires_at)
        logger.info("enrolled host %s (token %s)", request.host_key, token.token_id)
        return {
            "user_jwt": user_jwt,
            "leaf_urls": list(self.fleet.leaf_urls),
            "lattice": self.fleet.lattice,
            "labels": labels,
            "trusted_issuers": list(self.fleet.trusted_issuers),
            "cluster_issuers": list(self.fleet.cluster_issuers),
            "fleet": self.fleet.fleet_id,
            "expires_at": expires_at,
        }

    async def _save_device(
        self,
        request: protocol.EnrollRequest,
        token_id: str,
        labels: dict[str, str],
        now: int,
        expires_at: int,
    ) -> None:
        key = f"device.{request.host_key}"
        for _attempt in range(5):
            existing = await self.store.get(key)
            previous: list[str] = []
            enrolled_at = now
            if existing is not None:
                old = existing.value
                previous = [k for k in old.get("previous_user_keys", []) if isinstance(k, str)]
                if old.get("user_key") not in (None, request.user_key):
                    previous.append(str(old["user_key"]))
                    logger.warning(
                        "host %s re-enrolled with token %s; user key %s superseded%s",
                        request.host_key,
                        token_id,
                        old.get("user_key"),
                        " (it had been revoked)" if old.get("revoked") else "",
                    )
                elif old.get("token_id") == token_id:
                    enrolled_at = int(old.get("enrolled_at", now))
            device = {
                "host_key": request.host_key,
                "user_key": request.user_key,
                "previous_user_keys": previous[-16:],
                "name": request.facts.get("name", ""),
                "labels": labels,
                "facts": request.facts,
                "token_id": token_id,
                "enrolled_at": enrolled_at,
                "last_renew": None,
                "credential_expires": expires_at,
                "revoked": False,
                "revoked_at": None,
            }
            try:
                if existing is None:
                    await self.store.create(key, device)
                else:
                    await self.store.update(key, device, existing.revision)
            except Conflict:
                continue
            return
        raise _refused("the device record is being changed concurrently; try again", "busy", 409)

    def _mint(self, user_key: str, host_key: str, expires_at: int) -> str:
        claims = jwt.scoped_user_claims(
            user_key,
            host_key,
            issuer_account=self.fleet.account,
            expires_at=expires_at,
            tags=(fleet_tag(self.fleet.fleet_id),),
        )
        return jwt.encode(claims, self._signer)

    # --- renewal ---------------------------------------------------------------------------

    async def renew(self, subject: str, body: bytes) -> dict[str, Any]:
        """A fresh JWT for an enrolled, unrevoked device, for its current user key."""
        request = protocol.parse_renew(body)
        if subject != subjects.renew(self.fleet.fleet_id, request.host_key):
            raise _refused("the request names another host than its subject", "subject-mismatch")
        now = int(self.clock())
        if abs(now - request.ts) > protocol.MAX_CLOCK_SKEW_S:
            raise _refused(
                f"the device clock is {request.ts - now:+d} s off the service's; fix its time",
                "clock-skew",
                400,
            )
        message = protocol.renew_message(
            self.fleet.fleet_id, request.host_key, request.user_key, request.ts
        )
        if not protocol.signature_ok(request.user_key, message, request.signature):
            raise _refused(
                "the renewal signature does not verify with the user key", "signature-invalid"
            )
        key = f"device.{request.host_key}"
        for _attempt in range(5):
            record = await self.store.get(key)
            if record is None:
                raise _refused("this host is not enrolled in the fleet", "unknown-device", 404)
            device = record.value
            if device.get("revoked"):
                raise _refused(
                    "this device was revoked; it needs a new enrollment token", "revoked"
                )
            if device.get("user_key") != request.user_key:
                raise _refused("this user key was replaced by a newer enrollment", "superseded")
            expires_at = now + self.fleet.credential_ttl_s
            try:
                await self.store.update(
                    key,
                    {**device, "last_renew": now, "credential_expires": expires_at},
                    record.revision,
                )
            except Conflict:
                continue
            logger.info("renewed the credentials of host %s", request.host_key)
            return {
                "user_jwt": self._mint(request.user_key, request.host_key, expires_at),
                "expires_at": expires_at,
            }
        raise _refused("the device record is being changed concurrently; try again", "busy", 409)

    # --- admin -----------------------------------------------------------------------------

    def check_admin(self, op: str, body: bytes) -> dict[str, Any]:
        """The arguments of an admin request whose signature and time check out."""
        request = protocol.parse_admin(body)
        now = int(self.clock())
        if abs(now - request.ts) > protocol.MAX_CLOCK_SKEW_S:
            raise _refused("the admin request is too old or from the future", "clock-skew", 400)
        message = protocol.admin_message(
            self.fleet.fleet_id, op, request.ts, request.nonce, request.args
        )
        if not protocol.signature_ok(self.fleet.admin_key, message, request.signature):
            raise _refused("the request is not signed by this fleet's admin key", "not-admin")
        return request.args

    async def create_tokens(self, args: dict[str, Any]) -> dict[str, Any]:
        """``token.create``: ``count`` single-use tokens bound to ``labels``."""
        f = protocol.admin_args(args, "token.create", {"labels", "expires_in", "count"})
        labels = f.labels("labels")
        lifetime = f.integer("expires_in", low=1, high=MAX_TOKEN_LIFETIME_S, default=86400)
        count = f.integer("count", low=1, high=MAX_TOKENS_PER_REQUEST, default=1)
        now = int(self.clock())
        created = []
        for _ in range(count):
            token = new_token(self.fleet.fleet_id)
            record = {
                "id": token.token_id,
                "secret_sha256": token.secret_sha256,
                "labels": labels,
                "created_at": now,
                "expires_at": now + lifetime,
                "state": "unused",
            }
            await self.store.create(f"token.{token.token_id}", record)
            created.append({"token": str(token), "id": token.token_id, "labels": labels,
                            "expires_at": now + lifetime})  # fmt: skip
        logger.info("created %d enrollment token(s)", count)
        return {"tokens": created}

    async def list_tokens(self, args: dict[str, Any]) -> dict[str, Any]:
        """``token.list``: every token record, without secret digests."""
        protocol.admin_args(args, "token.list", set())
        return {"tokens": [_public_token(r) for r in await self.store.scan("token")]}

    async def revoke_token(self, args: dict[str, Any]) -> dict[str, Any]:
        """``token.revoke``: an unused token can no longer be spent."""
        f = protocol.admin_args(args, "token.revoke", {"id"})
        token_id = check_token_id(f.string("id", limit=16))
        for _attempt in range(5):
            record = await self.store.get(f"token.{token_id}")
            if record is None:
                raise _refused(f"there is no token {token_id}", "token-unknown", 404)
            if record.value.get("state") == "spent":
                raise _refused(
                    f"the token {token_id} was already used by {record.value.get('host_key')}; "
                    "revoke the device instead",
                    "token-used",
                    409,
                )
            if record.value.get("state") == "revoked":
                return {"token": _public_token(record)}
            value = {**record.value, "state": "revoked", "revoked_at": int(self.clock())}
            try:
                revision = await self.store.update(record.key, value, record.revision)
            except Conflict:
                continue
            return {"token": _public_token(Record(record.key, value, revision))}
        raise _refused("the token is being changed concurrently; try again", "busy", 409)

    async def list_devices(self, args: dict[str, Any]) -> dict[str, Any]:
        """``devices``: every enrolled device."""
        protocol.admin_args(args, "devices", set())
        return {"devices": [r.value for r in await self.store.scan("device")]}

    async def revoke_device(self, args: dict[str, Any]) -> dict[str, Any]:
        """``revoke``: refuse the device's renewals from now on; name its user keys."""
        f = protocol.admin_args(args, "revoke", {"host_key"})
        host_key = f.key("host_key", KeyKind.SERVER)
        for _attempt in range(5):
            record = await self.store.get(f"device.{host_key}")
            if record is None:
                raise _refused(
                    f"host {host_key} is not enrolled in this fleet", "unknown-device", 404
                )
            device = dict(record.value)
            if not device.get("revoked"):
                device.update(revoked=True, revoked_at=int(self.clock()))
                try:
                    await self.store.update(record.key, device, record.revision)
                except Conflict:
                    continue
                logger.warning("revoked host %s", host_key)
            users = [device.get("user_key"), *device.get("previous_user_keys", [])]
            return {"device": device, "user_keys": [u for u in users if isinstance(u, str)]}
        raise _refused("the device record is being changed concurrently; try again", "busy", 409)


def _public_token(record: Record) -> dict[str, Any]:
    return {k: v for k, v in record.value.items() if k != "secret_sha256"}
