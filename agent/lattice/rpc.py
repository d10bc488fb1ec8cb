"""Actor RPC on the lattice: serving ``wasmbus.rpc.{lattice}.{actor}`` and calling out.

Serving: one queue subscription per running actor (the subject is the queue group, so
hosts running the same actor share the load). Each request is decoded, its anti-forgery
claims validated — signed by a key in ``cluster_issuers``, URLs, hash, expiry, host id,
and addressed to this very actor — checked against replay (:mod:`agent.lattice.replay`),
and only then run in the sandbox. Every request gets an InvocationResponse: the answer,
or ``error`` set; a forged, replayed or malformed one never reaches the actor. Rejections
are logged rate-limited, with the sender's strings escaped. Requests are served
concurrently (bounded), so callers can pipeline.

Calling out: :class:`LatticeRpcClient` sends actor-to-actor and actor-to-provider calls as
invocations signed with this host's cluster key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from agent.background import Background
from agent.errors import (
    ActorError,
    HostCallError,
    InvocationError,
    LatticeEdgeError,
)
from agent.identity.keys import KeyPair
from agent.lattice import events, subjects
from agent.lattice.actors import ActorRegistry
from agent.lattice.control_codec import LinkDefinition
from agent.lattice.invocation import (
    Invocation,
    InvocationResponse,
    WasmCloudEntity,
    new_invocation,
    validate_invocation,
)
from agent.lattice.replay import ReplayGuard
from agent.logs import RateLimiter, escape

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from agent.lattice.natsclient import NatsClient

__all__ = ["LatticeRpcClient", "RpcServer"]

logger = logging.getLogger("lattice_edge.rpc")

MAX_IN_FLIGHT = 256  # requests served at once; beyond this NATS buffers them
CALL_TIMEOUT_S = 10.0


class RpcServer:
    """Serves invocations for the actors in ``registry``."""

    def __init__(
        self,
        nats_client: NatsClient,
        registry: ActorRegistry,
        *,
        lattice: str,
        host_id: str,
        cluster_issuers: Collection[str],
        background: Background,
        emit_rpc_event: Callable[[str, dict[str, Any]], None] | None = None,
        replay: ReplayGuard | None = None,
    ) -> None:
        self._nats = nats_client
        self._registry = registry
        self._lattice = lattice
        self._host_id = host_id
        self._issuers = tuple(cluster_issuers)
        self._background = background
        self._emit = emit_rpc_event
        self._replay = replay or ReplayGuard()
        self._limiter = RateLimiter()
        self._subscriptions: dict[str, Subscription] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    @property
    def cluster_issuers(self) -> tuple[str, ...]:
        """Keys whose invocations are accepted; a config reload replaces them."""
        return self._issuers

    @cluster_issuers.setter
    def cluster_issuers(self, keys: Collection[str]) -> None:
        self._issuers = tuple(keys)

    def serving(self) -> list[str]:
        """Actors with an RPC subscription."""
        return sorted(self._subscriptions)

    async def sync(self) -> None:
        """Subscribe for every running actor and unsubscribe for the stopped ones."""
        running = {actor.actor_id for actor in self._registry.running()}
        for actor_id in sorted(running - set(self._subscriptions)):
            subject = subjects.actor_rpc(self._lattice, actor_id)

            async def handler(msg: Msg, actor_id: str = actor_id) -> None:
                await self._slots.acquire()
                self._background.spawn(self._serve(msg, actor_id), what="invocation")

            self._subscriptions[actor_id] = await self._nats.subscribe(
                subject, queue=subject, cb=handler
            )
        for actor_id in sorted(set(self._subscriptions) - running):
            await self._unsubscribe(actor_id)

    async def close(self) -> None:
        """Stop taking invocations."""
        for actor_id in list(self._subscriptions):
            await self._unsubscribe(actor_id)

    async def _unsubscribe(self, actor_id: str) -> None:
        subscription = self._subscriptions.pop(actor_id)
        try:
            await subscription.unsubscribe()
        except Exception as exc:  # nats-py: the connection may already be closing
            logger.debug("unsubscribing %s: %s", actor_id, exc)

    async def _serve(self, msg: Msg, actor_id: str) -> None:
        try:
            response = await self._answer(bytes(msg.data), actor_id)
            if msg.reply:
                await msg.respond(response.encode())
        finally:
            self._slots.release()

    async def _answer(self, data: bytes, actor_id: str) -> InvocationResponse:
        try:
            invocation = Invocation.decode(data)
        except InvocationError as exc:
            return InvocationResponse.failure("", f"malformed invocation: {exc}")
        try:
            claims = validate_invocation(
                invocation, cluster_issuers=self._issuers, expected_target_pk=actor_id
            )
            self._replay.admit(claims.jti or f"{claims.issuer}:{claims.subject}", claims.issued_at)
        except InvocationError as exc:
            check = getattr(exc, "check", "format")
            self._limiter.log(
                logger, logging.WARNING, f"rejected:{check}",
                "rejected invocation %s for %s: %s",
                escape(invocation.id), actor_id, escape(str(exc)),
            )  # fmt: skip
            self._event(invocation, error=f"invocation rejected: {exc}")
            return InvocationResponse.failure(invocation.id, f"invocation rejected: {exc}")
        try:
            result = await self._registry.invoke(actor_id, invocation.operation, invocation.msg)
        except (ActorError, LatticeEdgeError) as exc:
            self._event(invocation, error=str(exc))
            return InvocationResponse.failure(invocation.id, str(exc))
        self._event(invocation)
        return InvocationResponse.success(invocation.id, result.response)

    def _event(self, invocation: Invocation, *, error: str | None = None) -> None:
        if self._emit is None:
            return
        source, dest = invocation.origin, invocation.target
        operation, size = invocation.operation, len(invocation.msg)
        if error is None:
            data = events.invocation_succeeded(
                source=source, dest=dest, operation=operation, size=size
            )
            self._emit("invocation_succeeded", data)
        else:
            data = events.invocation_failed(
                source=source, dest=dest, operation=operation, size=size, error=error
            )
            self._emit("invocation_failed", data)


class LatticeRpcClient:
    """Sends invocations from this host's actors over the lattice."""

    def __init__(
        self,
        nats_client: NatsClient,
        *,
        lattice: str,
        host_id: str,
        cluster_key: KeyPair,
        timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        self._nats = nats_client
        self._lattice = lattice
        self._host_id = host_id
        self._cluster_key = cluster_key
        self._timeout = timeout

    async def call_actor(self, origin: str, target: str, operation: str, payload: bytes) -> bytes:
        """Invoke actor ``target`` wherever it runs (possibly on this host)."""
        return await self._call(
            WasmCloudEntity(origin),
            WasmCloudEntity(target),
            operation,
            payload,
            subjects.actor_rpc(self._lattice, target),
        )

    async def call_provider(
        self, origin: str, link: LinkDefinition, operation: str, payload: bytes
    ) -> bytes:
        """Invoke the provider behind a link definition."""
        target = WasmCloudEntity(link.provider_id, link.contract_id, link.link_name)
        subject = subjects.provider_rpc(self._lattice, link.provider_id, link.link_name)
        return await self._call(WasmCloudEntity(origin), target, operation, payload, subject)

    async def _call(
        self,
        origin: WasmCloudEntity,
        target: WasmCloudEntity,
        operation: str,
        payload: bytes,
        subject: str,
    ) -> bytes:
        import nats.errors

        invocation = new_invocation(
            origin,
            target,
            operation,
            payload,
            cluster_key=self._cluster_key,
            host_id=self._host_id,
        )
        try:
            reply = await self._nats.request(subject, invocation.encode(), timeout=self._timeout)
        except nats.errors.NoRespondersError:
            raise HostCallError(f"no host serves {target.public_key}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise HostCallError(f"calling {target.public_key} failed: {exc}") from exc
        try:
            response = InvocationResponse.decode(bytes(reply.data))
        except InvocationError as exc:
            raise HostCallError(f"{target.public_key} sent a malformed response: {exc}") from exc
        if response.invocation_id and response.invocation_id != invocation.id:
            # Not an answer to this call: someone replied who should not have.
            raise HostCallError(f"the response from {target.public_key} answers another call")
        if response.error:
            raise HostCallError(response.error)
        return bytes(response.msg)
