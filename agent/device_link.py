"""The running agent's link to its fleet: credential renewal and config reloads.

:class:`DeviceLink` renews the upstream credentials at half their lifetime over the
device's own link (its device credentials), replaces ``upstream.creds`` atomically and
restarts the leaf so it reconnects with them. On SIGHUP — ``lattice-edge enroll`` sends it
to a running agent — it re-reads the config and applies the upstream, labels and trust
without restarting the agent. A refused renewal (revoked, superseded) is logged as an
error and recorded in ``<data>/fleet.json`` for ``lattice-edge status``; the device keeps
serving its local lattice either way. Nothing but cancellation ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import FleetRequestError, IdentityError
from agent.fleet_state import read_fleet_state, write_fleet_state
from agent.identity import jwt
from agent.identity.keys import KeyPair

if TYPE_CHECKING:
    from agent.host import Host

__all__ = ["DeviceLink"]

logger = logging.getLogger("lattice_edge.enroll")

RETRY_INITIAL_S = 2.0
RETRY_MAX_S = 60.0
LINK_WAIT_S = 15.0
LINK_SETTLE_S = 0.3
REFUSALS = {"revoked": "revoked", "superseded": "refused", "unknown-device": "refused"}


class DeviceLink:
    """Keeps a running host's upstream current: renewals at half-life, reloads on SIGHUP."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._reload = asyncio.Event()
        self._retry_delay = RETRY_INITIAL_S
        self._next_try: float | None = None

    def request_reload(self) -> None:
        """The host's config was reloaded: pick it up at the next opportunity."""
        self._reload.set()

    async def run(self) -> None:
        """Serve until cancelled; no error ends it (one error policy for background work)."""
        try:
            await self._announce_when_linked()
        except Exception:  # the periodic heartbeat still announces the host
            logger.exception("announcing the host upstream failed")
        while True:
            delay = await asyncio.to_thread(self._seconds_to_renewal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), delay)
            try:
                if self._reload.is_set():
                    self._reload.clear()
                    await self.apply_config()
                elif delay is not None:
                    await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the device link failed; retrying in %.0f s", self._retry_delay)
                self._back_off()

    # --- renewal -------------------------------------------------------------------------

    def _creds_path(self) -> Path | None:
        upstream = self.host.config.upstream
        return upstream.credentials if upstream is not None else None

    def _seconds_to_renewal(self) -> float | None:
        state = read_fleet_state(self.host.config)
        path = self._creds_path()
        if state is None or path is None or state.get("status") in ("revoked", "refused"):
            return None
        if self._next_try is not None:
            return max(0.0, self._next_try - time.time())
        try:
            claims = jwt.decode(jwt.read_creds(path).jwt).claims
        except IdentityError as exc:
            logger.error("cannot read the upstream credentials: %s", exc)
            return None
        issued, expires = claims.get("iat"), claims.get("exp")
        if not isinstance(issued, int) or not isinstance(expires, int):
            return None  # credentials that never expire need no renewal
        return max(0.0, issued + (expires - issued) / 2 - time.time())

    def _back_off(self) -> None:
        self._next_try = time.time() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)

    async def renew(self) -> None:
        """Ask the fleet for a fresh JWT; on success swap the creds and restart the leaf."""
        # Only a fleet device gets here: the agent outside any fleet never imports these.
        from agent.fleet import protocol, subjects
        from agent.fleet.request import REQUEST_TIMEOUT_S, check_jwt, request_json

        config = self.host.config
        state = read_fleet_state(config) or {}
        path = self._creds_path()
        fleet = state.get("fleet")
        if path is None or not isinstance(fleet, str):
            return
        creds = await asyncio.to_thread(jwt.read_creds, path)
        user = KeyPair.from_seed(creds.seed)
        host_id = self.host.keys.host_id
        ts = int(time.time())
        message = protocol.renew_message(fleet, host_id, user.public_key, ts)
        signature = protocol.b64(user.sign(message))
        body = protocol.canonical_json(
            {"host_key": host_id, "user_key": user.public_key, "ts": ts, "signature": signature}
        )
        try:
            reply = protocol.parse_renew_reply(
                await request_json(
                    self.host.nats,
                    subjects.renew(fleet, host_id),
                    body,
                    what="renew",
                    timeout=REQUEST_TIMEOUT_S,
                )
            )
            check_jwt(reply.user_jwt, user, host_id)
        except FleetRequestError as exc:
            status = REFUSALS.get(exc.reason)
            if status is not None:
                logger.error(
                    "the fleet refused to renew this device's credentials (%s): %s; the device "
                    "keeps serving its local lattice",
                    exc.reason,
                    exc,
                )
                await asyncio.to_thread(
                    write_fleet_state, config, {**state, "status": status, "error": str(exc)}
                )
                return
            logger.warning(
                "renewing the credentials failed: %s; retrying in %.0f s", exc, self._retry_delay
            )
            await asyncio.to_thread(write_fleet_state, config, {**state, "error": str(exc)})
            self._back_off()
            return
        # fsync on an SD card can take a while: off the event loop
        renewed = jwt.Creds(jwt=reply.user_jwt, seed=creds.seed)
        await asyncio.to_thread(jwt.write_creds, path, renewed)
        fresh = {**state, "status": "active", "error": None, "last_renew": int(time.time())}
        await asyncio.to_thread(write_fleet_state, config, fresh)
        self._next_try, self._retry_delay = None, RETRY_INITIAL_S
        logger.info(
            "renewed the upstream credentials; they now expire at %s",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(reply.expires_at)),
        )
        await self.host.leaf.restart()
        await self._announce_when_linked()

    # --- reload --------------------------------------------------------------------------

    async def apply_config(self) -> None:
        """After a reload (:meth:`agent.host.Host.reload` applied the new config): renew on
        the new credentials' schedule, and announce the host on its new link."""
        self._next_try, self._retry_delay = None, RETRY_INITIAL_S
        await self._announce_when_linked()

    async def _announce_when_linked(self, timeout: float = LINK_WAIT_S) -> None:
        """Heartbeat as soon as the upstream link is up, so the cloud sees this host (with
        its labels) at once instead of at the next periodic heartbeat; events published
        before the link was up went nowhere."""
        from agent.leaf.monitor import MonitorError, get_json

        host = self.host
        if host.config.upstream is None or host.control is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._reload.is_set():
            try:
                _, leafz = await get_json(host.config.leaf.monitor, "/leafz", timeout=1.0)
            except MonitorError:
                leafz = None
            linked = isinstance(leafz, dict) and int(leafz.get("leafnodes") or 0) > 0
            if linked and host.nats is not None and host.nats.is_connected:
                await asyncio.sleep(LINK_SETTLE_S)  # the hub's interest reaches the leaf
                host.control.heartbeat()
                return
            await asyncio.sleep(0.2)
