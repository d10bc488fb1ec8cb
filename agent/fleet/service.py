"""``lattice-edge fleet serve``: the fleet's ``nats.micro`` service on the hub.

One service named ``lattice-edge-fleet`` (found with ``$SRV.PING``), its endpoints in the
default queue group, so any number of ``serve`` processes share the load. Every handler is
wrapped: whatever goes wrong, the requester gets one JSON error naming the problem —
``{"error", "code", "reason"}`` plus nats.micro's error headers — and never an
exception's ``repr``; the service itself keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from agent import __version__
from agent.errors import FleetRequestError, FleetStoreError, LatticeEdgeError
from agent.fleet import protocol, subjects
from agent.fleet.fleetdir import FleetDir
from agent.fleet.registrar import Registrar
from agent.fleet.store import FleetStore

__all__ = ["FleetService", "run_service"]

logger = logging.getLogger("lattice_edge.fleet")

Handler = Callable[[str, bytes], Awaitable[dict[str, Any]]]
MAX_IN_FLIGHT = 64


class FleetService:
    """The micro service: endpoints wired to the registrar (and, later, the rollout)."""

    def __init__(
        self, nats_client: Any, registrar: Registrar, *, tasks: asyncio.TaskGroup | None = None
    ) -> None:
        self._nats = nats_client
        self._tasks = tasks
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.registrar = registrar
        self.fleet = registrar.fleet
        self._service: Any = None
        self._admin: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "token.create": registrar.create_tokens,
            "token.list": registrar.list_tokens,
            "token.revoke": registrar.revoke_token,
            "devices": registrar.list_devices,
            "revoke": registrar.revoke_device,
        }

    def add_admin(
        self, op: str, handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    ) -> None:
        """Serve one more admin operation (the rollout adds its own)."""
        self._admin[op] = handler

    async def start(self) -> None:
        """Register the service and its endpoints."""
        import nats.micro

        fleet_id = self.fleet.fleet_id
        self._service = await nats.micro.add_service(
            self._nats,
            name=subjects.SERVICE_NAME,
            version=__version__,
            description="Lattice Edge fleet: enrollment, renewal, revocation and rollout",
            metadata={
                "fleet": fleet_id,
                "account": self.fleet.account,
                "lattice": self.fleet.lattice,
            },
        )

        async def challenge(_subject: str, body: bytes) -> dict[str, Any]:
            return self.registrar.challenge(body)

        async def enroll(_subject: str, body: bytes) -> dict[str, Any]:
            return await self.registrar.enroll(body)

        endpoints: list[tuple[str, str, Handler]] = [
            ("enroll-challenge", subjects.enroll_challenge(fleet_id), challenge),
            ("enroll", subjects.enroll_complete(fleet_id), enroll),
            ("renew", f"{subjects.prefix(fleet_id)}.device.*.renew", self.registrar.renew),
        ]
        for op in subjects.ADMIN_OPS:
            endpoints.append(
                (
                    f"admin-{op.replace('.', '-')}",
                    subjects.admin(fleet_id, op),
                    self._admin_handler(op),
                )
            )
        for name, subject, handler in endpoints:
            await self._service.add_endpoint(
                name=name, subject=subject, handler=self._concurrent(guarded(handler, name))
            )

    def _concurrent(
        self, handle: Callable[[Any], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        """nats-py runs one subscription's callbacks one after another; serve up to
        MAX_IN_FLIGHT requests at once instead, in the service's task group (requests wait
        for KV round trips, and revisions keep concurrent ones as safe as two processes)."""
        tasks = self._tasks
        if tasks is None:
            return handle

        async def dispatch(request: Any) -> None:
            await self._slots.acquire()

            async def run() -> None:
                try:
                    await handle(request)
                finally:
                    self._slots.release()

            tasks.create_task(run())

        return dispatch

    def _admin_handler(self, op: str) -> Handler:
        async def handle(_subject: str, body: bytes) -> dict[str, Any]:
            args = self.registrar.check_admin(op, body)
            handler = self._admin.get(op)
            if handler is None:
                raise FleetRequestError(
                    f"this service does not serve '{op}'", code=404, reason="unknown-op"
                )
            return await handler(args)

        return handle

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Deregister, then give the requests in flight ``drain_timeout`` s to finish."""
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
            self._service = None
        taken = 0
        try:
            async with asyncio.timeout(drain_timeout):
                for _ in range(MAX_IN_FLIGHT):
                    await self._slots.acquire()
                    taken += 1
        except TimeoutError:
            logger.warning("stopping with %d request(s) unfinished", MAX_IN_FLIGHT - taken)
        for _ in range(taken):
            self._slots.release()


def guarded(handler: Handler, name: str) -> Callable[[Any], Awaitable[None]]:
    """Wrap ``handler`` so every request gets a reply and no exception escapes."""

    async def handle(request: Any) -> None:
        data = bytes(request.data)
        try:
            if len(data) > protocol.MAX_REQUEST_BYTES:
                raise FleetRequestError(
                    f"{name}: the body is {len(data)} bytes, more than {protocol.MAX_REQUEST_BYTES}"
                )
            reply = protocol.canonical_json(await handler(request.subject, data))
        except FleetRequestError as exc:
            await _respond_error(request, exc)
            return
        except FleetStoreError as exc:
            logger.error("%s: the fleet store failed: %s", name, exc)
            await _respond_error(request, FleetRequestError(
                "the fleet's state store is unavailable; try again", code=503, reason="unavailable"
            ))  # fmt: skip
            return
        except Exception:  # one error policy: log it, answer, keep serving
            logger.exception("%s: internal error", name)
            await _respond_error(
                request, FleetRequestError("internal error", code=500, reason="internal")
            )
            return
        await _respond(request, reply)

    return handle


async def _respond(request: Any, data: bytes, headers: dict[str, str] | None = None) -> None:
    try:
        await request.respond(data, headers=headers)
    except Exception as exc:  # no reply subject, or the connection is closing
        logger.debug("cannot reply: %s", exc)


async def _respond_error(request: Any, error: FleetRequestError) -> None:
    description = str(error).replace("\r", " ").replace("\n", " ")[:500]
    headers = {"Nats-Service-Error": description, "Nats-Service-Error-Code": str(error.code)}
    await _respond(request, protocol.error_body(error), headers)


async def connect_hub(fleet: FleetDir, *, name: str) -> Any:
    """A long-lived connection to the hub with the fleet's credentials."""
    import nats
    import nats.errors

    async def on_error(exc: Exception) -> None:
        logger.warning("hub connection: %s", exc)

    try:
        return await nats.connect(
            servers=list(fleet.hub_urls),
            user_credentials=str(fleet.creds),
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise FleetStoreError(
            f"cannot reach the hub at {', '.join(fleet.hub_urls)}: {exc}"
        ) from exc


async def run_service(
    fleet: FleetDir,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then deregister and drain."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nats_client = await connect_hub(fleet, name=f"lattice-edge fleet serve {fleet.fleet_id}")
    service: FleetService | None = None
    try:
        store = await FleetStore(nats_client, fleet.fleet_id).open()
        async with asyncio.TaskGroup() as tasks:
            from agent.fleet.deploy import attach_rollout

            service = FleetService(nats_client, Registrar(fleet, store), tasks=tasks)
            owner = f"serve-{nats_client.client_id}-{os.getpid()}"
            reconciler = await attach_rollout(service, nats_client, store, tasks, owner=owner)
            await service.start()
            if on_ready is not None:
                on_ready(fleet.fleet_id)
            await stop.wait()
            await service.stop()
            await reconciler.stop()
            raise _Stopped
    except* _Stopped:
        pass
    except* LatticeEdgeError as group:
        raise group.exceptions[0] from None
    finally:
        if service is not None:
            await service.stop(drain_timeout=0.5)  # already drained unless it failed
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nats_client.drain(), 5)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class _Stopped(Exception):
    """Ends the task group on a requested stop."""
