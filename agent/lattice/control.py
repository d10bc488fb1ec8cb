"""The wasmCloud 0.x control interface, lattice events and the heartbeat.

Requests on ``wasmbus.ctl.{lattice}.…`` are JSON; every one we receive gets an answer
(``{"accepted": false, "error": …}`` for anything malformed or unknown), except auctions
whose constraints this host does not satisfy, which hosts answer with silence. Commands
that take time (start, scale, update) are acknowledged at once and carried out in a task
of the host's task group; their outcome is reported as CloudEvents on
``wasmbus.evt.{lattice}`` and ``wasmbus.evt.{lattice}.{type}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from agent import __version__
from agent.errors import LatticeEdgeError
from agent.lattice import control_codec as codec
from agent.lattice import events, subjects
from agent.lattice.actors import ActorInstance, ActorRegistry, RunningActor
from agent.lattice.hostcalls import LinkTable
from agent.lattice.refs import parse_ref
from agent.lattice.subjects import ControlKind

__all__ = ["ControlServer", "HostFacts", "host_labels"]

logger = logging.getLogger("lattice_edge.control")


def host_labels(profile: str, board_model: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    """Labels a host advertises: the ``hostcore.*`` trio, the board, and the config's."""
    labels = {
        "hostcore.os": platform.system().lower(),
        "hostcore.arch": platform.machine(),
        "hostcore.osfamily": "unix" if os.name == "posix" else os.name,
        "lattice-edge.profile": profile,
    }
    if board_model:
        labels["lattice-edge.board"] = board_model
    labels.update(extra)
    return labels


class HostFacts:
    """What the control interface says about this host."""

    def __init__(
        self,
        *,
        host_id: str,
        cluster_key: str,
        cluster_issuers: tuple[str, ...],
        lattice: str,
        friendly_name: str,
        labels: Mapping[str, str],
        js_domain: str | None,
        client_url: str,
    ) -> None:
        self.host_id = host_id
        self.cluster_key = cluster_key
        self.cluster_issuers = cluster_issuers
        self.lattice = lattice
        self.friendly_name = friendly_name
        self.labels = dict(labels)
        self.js_domain = js_domain
        self.client_url = client_url
        self.started = time.monotonic()

    @property
    def uptime(self) -> float:
        """Seconds since the host started."""
        return time.monotonic() - self.started


class ControlServer:
    """Answers control requests and publishes events for one host."""

    def __init__(
        self,
        nats_client: Any,
        facts: HostFacts,
        registry: ActorRegistry,
        links: LinkTable,
        *,
        tasks: asyncio.TaskGroup,
        on_change: Callable[[], Awaitable[None]],
        on_stop: Callable[[], None],
        resources: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._nats = nats_client
        self.facts = facts
        self._registry = registry
        self._links = links
        self._tasks = tasks
        self._on_change = on_change  # persist state and resync RPC subscriptions
        self._on_stop = on_stop
        self._resources = resources
        self._subscriptions: list[Any] = []
        self._heartbeat: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, heartbeat_interval: float) -> None:
        """Subscribe, announce ``host_started`` and start heartbeating."""
        for sub in subjects.control_subscriptions(self.facts.lattice, self.facts.host_id):
            self._subscriptions.append(
                await self._nats.subscribe(sub.subject, queue=sub.queue or "", cb=self._on_msg)
            )
        self.emit(
            "host_started",
            events.host_started(
                labels=self.facts.labels,
                friendly_name=self.facts.friendly_name,
                uptime_seconds=self.facts.uptime,
                version=__version__,
            ),
        )
        self._heartbeat = self._tasks.create_task(self._beat(heartbeat_interval))

    async def stop(self) -> None:
        """Stop taking requests; announce ``host_stopped``."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # nats-py: the connection may already be closing
                logger.debug("unsubscribing: %s", exc)
        self._subscriptions.clear()
        self.emit("host_stopped", events.host_stopped(labels=self.facts.labels))

    # --- events --------------------------------------------------------------------------

    def emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Publish a CloudEvent on the lattice's event subjects (fire and forget)."""
        body = json.dumps(events.cloud_event(event_type, self.facts.host_id, data)).encode()
        lattice = self.facts.lattice
        for subject in (subjects.events(lattice), subjects.event(lattice, event_type)):
            self._tasks.create_task(self._publish(subject, body))

    def emit_rpc(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Publish an invocation result on ``wasmbus.rpcevt.{lattice}``."""
        body = json.dumps(events.cloud_event(event_type, self.facts.host_id, data)).encode()
        self._tasks.create_task(self._publish(subjects.rpc_events(self.facts.lattice), body))

    async def _publish(self, subject: str, body: bytes) -> None:
        try:
            await self._nats.publish(subject, body)
        except Exception as exc:  # a closed connection during shutdown is not an error
            logger.debug("publishing %s failed: %s", subject, exc)

    def heartbeat(self) -> None:
        """Publish one ``host_heartbeat`` now (also when the upstream link comes up)."""
        data = events.host_heartbeat(self.inventory())
        if self._resources is not None:
            data["resources"] = self._resources()
        self.emit("host_heartbeat", data)

    async def _beat(self, interval: float) -> None:
        while True:
            self.heartbeat()
            await asyncio.sleep(interval)

    # --- views ---------------------------------------------------------------------------

    def inventory(self) -> codec.HostInventory:
        """This host's inventory."""
        return codec.HostInventory(
            host_id=self.facts.host_id,
            issuer=self.facts.cluster_key,
            labels=self.facts.labels,
            friendly_name=self.facts.friendly_name,
            version=__version__,
            uptime_seconds=self.facts.uptime,
            actors=tuple(_actor_info(actor) for actor in self._registry.running()),
        )

    def ping_reply(self) -> dict[str, Any]:
        """The Host record for ``ping.hosts``."""
        return codec.ping_reply(
            host_id=self.facts.host_id,
            issuer=self.facts.cluster_key,
            labels=self.facts.labels,
            friendly_name=self.facts.friendly_name,
            uptime_seconds=self.facts.uptime,
            version=__version__,
            cluster_issuers=self.facts.cluster_issuers,
            lattice=self.facts.lattice,
            js_domain=self.facts.js_domain,
            ctl_host=self.facts.client_url,
            rpc_host=self.facts.client_url,
        )

    # --- requests ------------------------------------------------------------------------

    async def _on_msg(self, msg: Any) -> None:
        try:
            reply = await self.handle(msg.subject, bytes(msg.data))
        except Exception as exc:  # never let a request take the server down
            logger.exception("control request on %s failed", msg.subject)
            reply = codec.ack(False, f"internal error: {type(exc).__name__}")
        if reply is not None and msg.reply:
            try:
                await msg.respond(codec.encode_json(reply))
            except Exception as exc:  # nats-py: the requester may be gone
                logger.debug("replying on %s failed: %s", msg.reply, exc)

    async def handle(self, subject: str, body: bytes) -> dict[str, Any] | None:
        """Answer one control request; None means "stay silent" (a lost auction)."""
        parsed = subjects.parse_control_subject(subject, self.facts.lattice)
        if parsed.host_id is not None and parsed.host_id != self.facts.host_id:
            return None  # addressed to another host; never ours to answer
        handler = self._handlers.get(parsed.kind)
        if handler is None:
            return codec.ack(False, "unsupported subject")
        try:
            return await handler(self, body)
        except LatticeEdgeError as exc:
            return codec.ack(False, str(exc))

    async def _ping(self, _body: bytes) -> dict[str, Any] | None:
        return self.ping_reply()

    async def _inventory(self, _body: bytes) -> dict[str, Any] | None:
        return self.inventory().to_json()

    async def _claims(self, _body: bytes) -> dict[str, Any] | None:
        claims = [a.claims for a in self._registry.running() if a.claims is not None]
        return codec.claims_reply(claims)

    async def _get_links(self, _body: bytes) -> dict[str, Any] | None:
        return codec.links_reply(self._links.all())

    async def _auction(self, body: bytes) -> dict[str, Any] | None:
        auction = codec.parse_actor_auction(body)
        if not codec.labels_satisfy(self.facts.labels, auction.constraints):
            return None
        return codec.auction_reply(auction, self.facts.host_id)

    async def _start(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_start_actor(body)
        parse_ref(request.actor_ref)  # a malformed reference is refused, not acknowledged
        self._tasks.create_task(
            self._start_work(request.actor_ref, request.count, request.annotations)
        )
        return codec.ack()

    async def _start_work(self, actor_ref: str, count: int, annotations: Mapping[str, str]) -> None:
        try:
            before = self._instance_ids(actor_ref)
            actor = await self._registry.start(actor_ref, count, annotations)
        except LatticeEdgeError as exc:
            logger.error("cannot start %s: %s", actor_ref, exc)
            failed = events.actor_start_failed(actor_ref=actor_ref, error=str(exc))
            self.emit("actor_start_failed", failed)
            return
        await self._on_change()
        for instance in actor.instances:
            if instance.instance_id not in before:
                self._started_event(actor, instance)

    def _instance_ids(self, actor_ref: str) -> set[str]:
        return {
            i.instance_id
            for a in self._registry.running()
            if a.image_ref == actor_ref
            for i in a.instances
        }

    def _started_event(self, actor: RunningActor, instance: ActorInstance) -> None:
        claims = actor.claims
        summary: dict[str, Any] = {}
        if claims is not None:
            summary = {
                "call_alias": claims.call_alias or "",
                "caps": list(claims.caps),
                "issuer": claims.issuer,
                "tags": list(claims.tags),
                "name": claims.name or "",
                "version": claims.ver or "",
                "revision": claims.rev or 0,
                "not_before_human": "never" if not claims.not_before else str(claims.not_before),
                "expires_human": "never" if not claims.expires else str(claims.expires),
            }
        self.emit(
            "actor_started",
            events.actor_started(
                public_key=actor.actor_id,
                image_ref=actor.image_ref,
                instance_id=instance.instance_id,
                annotations=instance.annotations,
                claims=summary,
                api_version=1 if actor.module.info.export("__wasmbus_rpc_version") else 0,
                host_id=self.facts.host_id,
            ),
        )

    def _stopped_events(self, actor_id: str, stopped: list[ActorInstance]) -> None:
        for instance in stopped:
            self.emit(
                "actor_stopped",
                events.actor_stopped(
                    public_key=actor_id,
                    instance_id=instance.instance_id,
                    annotations=instance.annotations,
                ),
            )

    async def _scale(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_scale_actor(body)
        actor_id = request.actor_id or self._actor_for_ref(request.actor_ref)
        if actor_id is None or self._registry.get(actor_id) is None:
            if request.count == 0:
                return codec.ack()
            parse_ref(request.actor_ref)
            self._tasks.create_task(
                self._start_work(request.actor_ref, request.count, request.annotations)
            )
            return codec.ack()
        self._tasks.create_task(self._scale_work(actor_id, request.count, request.annotations))
        return codec.ack()

    async def _scale_work(self, actor_id: str, count: int, annotations: Mapping[str, str]) -> None:
        actor = self._registry.get(actor_id)
        if actor is None:
            return
        before = {i.instance_id: i for i in actor.instances}
        try:
            after = await self._registry.scale(actor_id, count, annotations or None)
        except LatticeEdgeError as exc:
            logger.error("cannot scale %s: %s", actor_id, exc)
            failed = events.actor_start_failed(actor_ref=actor.image_ref, error=str(exc))
            self.emit("actor_start_failed", failed)
            return
        await self._on_change()
        now = {i.instance_id for i in after.instances} if after else set()
        self._stopped_events(actor_id, [i for key, i in before.items() if key not in now])
        if after is not None:
            for instance in after.instances:
                if instance.instance_id not in before:
                    self._started_event(after, instance)

    def _actor_for_ref(self, actor_ref: str) -> str | None:
        for actor in self._registry.running():
            if actor.image_ref == actor_ref or actor.actor_id == actor_ref:
                return actor.actor_id
        return None

    async def _update(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_update_actor(body)
        parse_ref(request.new_actor_ref)
        actor_id = request.actor_id
        if actor_id is None or self._registry.get(actor_id) is None:
            return codec.ack(False, f"actor {actor_id or '(none given)'} is not running here")
        self._tasks.create_task(self._update_work(actor_id, request.new_actor_ref))
        return codec.ack()

    async def _update_work(self, actor_id: str, new_ref: str) -> None:
        try:
            actor = await self._registry.update(actor_id, new_ref)
        except LatticeEdgeError as exc:
            logger.error("cannot update %s: %s", actor_id, exc)
            self.emit(
                "actor_update_failed",
                events.actor_update_failed(
                    public_key=actor_id, revision=0, instance_id="", reason=str(exc)
                ),
            )
            return
        await self._on_change()
        revision = actor.claims.rev or 0 if actor.claims else 0
        for instance in actor.instances:
            self.emit(
                "actor_updated",
                events.actor_updated(
                    public_key=actor_id, revision=revision, instance_id=instance.instance_id
                ),
            )

    async def _stop_host(self, body: bytes) -> dict[str, Any] | None:
        codec.parse_stop_host(body)
        # Answer first: the requester learns the stop was accepted before we go away.
        asyncio.get_running_loop().call_later(0.1, self._on_stop)
        return codec.ack()

    async def _put_link(self, body: bytes) -> dict[str, Any] | None:
        link = codec.parse_linkdef_put(body)
        self._links.put(link)
        await self._on_change()
        self.emit("linkdef_set", events.linkdef_set(link))
        return codec.ack()

    async def _del_link(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_linkdef_del(body)
        removed = self._links.delete(request.actor_id, request.contract_id, request.link_name)
        await self._on_change()
        provider = removed.provider_id if removed else ""
        self.emit("linkdef_deleted", events.linkdef_deleted(request, provider))
        return codec.ack()

    _handlers: ClassVar[
        dict[ControlKind, Callable[[ControlServer, bytes], Awaitable[dict[str, Any] | None]]]
    ] = {
        ControlKind.PING_HOSTS: _ping,
        ControlKind.GET_INVENTORY: _inventory,
        ControlKind.GET_CLAIMS: _claims,
        ControlKind.GET_LINKS: _get_links,
        ControlKind.AUCTION_ACTOR: _auction,
        ControlKind.LAUNCH_ACTOR: _start,
        ControlKind.START_ACTOR: _start,
        ControlKind.SCALE_ACTOR: _scale,
        ControlKind.UPDATE_ACTOR: _update,
        ControlKind.STOP_HOST: _stop_host,
        ControlKind.LINKDEFS_PUT: _put_link,
        ControlKind.LINKDEFS_DEL: _del_link,
    }


def _actor_info(actor: RunningActor) -> codec.ActorInfo:
    revision = actor.claims.rev or 0 if actor.claims else 0
    return codec.ActorInfo(
        id=actor.actor_id,
        image_ref=actor.image_ref,
        name=actor.name,
        instances=tuple(
            codec.ActorInstanceInfo(
                instance_id=instance.instance_id,
                revision=revision,
                annotations=dict(instance.annotations),
                image_ref=actor.image_ref,
                max_instances=len(actor.instances),
            )
            for instance in actor.instances
        ),
    )
