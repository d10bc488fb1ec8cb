"""The wasmCloud 0.x control interface, lattice events and the heartbeat.

Requests on ``wasmbus.ctl.{lattice}.…`` are JSON; every one we receive gets an answer
(``{"accepted": false, "error": …}`` for anything malformed or unknown), except auctions
whose constraints this host does not satisfy, which hosts answer with silence. Commands
that take time (start, stop, scale, update) are acknowledged once their intent is on disk
(:class:`~agent.state.StateKeeper`; a disk that refuses turns the ack into a refusal) and
carried out in background work (:class:`~agent.background.Background`: a failure there is
reported, never fatal); their outcome is reported as CloudEvents on
``wasmbus.evt.{lattice}`` and ``wasmbus.evt.{lattice}.{type}``. Link definitions are
acknowledged after they are saved, and not applied when they cannot be.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from agent import __version__
from agent.background import Background
from agent.errors import ControlRequestError, LatticeEdgeError, StateError
from agent.lattice import control_codec as codec
from agent.lattice import events, subjects
from agent.lattice.actors import ActorInstance, ActorRegistry, RunningActor
from agent.lattice.hostcalls import LinkTable
from agent.lattice.refs import parse_ref
from agent.lattice.subjects import ControlKind
from agent.logs import RateLimiter, escape
from agent.state import StateKeeper

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from agent.lattice.natsclient import NatsClient

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
        nats_client: NatsClient,
        facts: HostFacts,
        registry: ActorRegistry,
        links: LinkTable,
        *,
        keeper: StateKeeper,
        background: Background,
        on_change: Callable[[], Awaitable[None]],
        on_stop: Callable[[], None],
        resources: Callable[[], dict[str, Any]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        check_link: Callable[[codec.LinkDefinition], None] | None = None,
    ) -> None:
        self._nats = nats_client
        self.facts = facts
        self._registry = registry
        self._links = links
        self._keeper = keeper
        self._background = background
        self._on_change = on_change  # actors or links changed: resync what follows them
        self._on_stop = on_stop
        self._resources = resources
        self._health = health  # the agent's own state for the heartbeat (state file, …)
        self._check_link = check_link  # refuses links the host could never serve
        self._subscriptions: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._limiter = RateLimiter()

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
        self._heartbeat = self._background.spawn(self._beat(heartbeat_interval), what="heartbeat")

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
        """Publish a CloudEvent on the lattice's event subjects (the host waits for none)."""
        body = json.dumps(events.cloud_event(event_type, self.facts.host_id, data)).encode()
        lattice = self.facts.lattice
        for subject in (subjects.events(lattice), subjects.event(lattice, event_type)):
            self._background.spawn(self._publish(subject, body), what="event publish")

    def emit_rpc(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Publish an invocation result on ``wasmbus.rpcevt.{lattice}``."""
        body = json.dumps(events.cloud_event(event_type, self.facts.host_id, data)).encode()
        subject = subjects.rpc_events(self.facts.lattice)
        self._background.spawn(self._publish(subject, body), what="event publish")

    async def _publish(self, subject: str, body: bytes) -> None:
        try:
            await self._nats.publish(subject, body)
        except Exception as exc:  # a closed connection during shutdown is not an error
            logger.debug("publishing %s failed: %s", subject, exc)

    def heartbeat(self) -> None:
        """Publish one ``host_heartbeat`` now (also when the upstream link comes up).

        ``resources`` must not block (psutil's CPU figure since the previous call).
        """
        data = events.host_heartbeat(self.inventory())
        if self._resources is not None:
            data["resources"] = self._resources()
        if self._health is not None:
            data["lattice_edge"] = self._health()
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
            actors=tuple(
                _actor_info(actor, self._registry.quarantined())
                for actor in self._registry.running()
            ),
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

    async def _on_msg(self, msg: Msg) -> None:
        try:
            reply = await self.handle(msg.subject, bytes(msg.data))
        except Exception as exc:  # never let a request take the server down
            reply = codec.ack(False, self._background.report(exc, "control request"))
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
            self._limiter.log(
                logger, logging.INFO, f"refused:{parsed.kind.value}",
                "refused %s: %s", parsed.kind.value, escape(str(exc)),
            )  # fmt: skip
            return codec.ack(False, str(exc))

    def _check_host(self, host_id: str | None) -> None:
        """A command whose body names another host is refused, never carried out here."""
        if host_id is not None and host_id != self.facts.host_id:
            raise ControlRequestError(
                f"the request names host {host_id}, but this is {self.facts.host_id}"
            )

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
        self._check_host(request.host_id)
        parse_ref(request.actor_ref)  # a malformed reference is refused, not acknowledged
        token = self._keeper.begin(
            "start", request.actor_ref, count=request.count, annotations=request.annotations
        )
        self._spawn_start(request.actor_ref, request.count, request.annotations, token)
        return codec.ack()

    def _spawn_start(
        self, actor_ref: str, count: int, annotations: Mapping[str, str], token: int
    ) -> None:
        self._background.spawn(
            self._start_work(actor_ref, count, annotations, token),
            what=f"start of {escape(actor_ref)}",
        )

    async def _start_work(
        self, actor_ref: str, count: int, annotations: Mapping[str, str], token: int
    ) -> None:
        before = self._instance_ids(actor_ref)
        try:
            actor = await self._registry.start(actor_ref, count, annotations)
        except Exception as exc:
            reason = self._background.report(exc, f"start of {escape(actor_ref)}")
            self.emit(
                "actor_start_failed", events.actor_start_failed(actor_ref=actor_ref, error=reason)
            )
            return
        finally:
            self._keeper.settle(token)
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
        self._check_host(request.host_id)
        actor_id = request.actor_id or self._actor_for_ref(request.actor_ref)
        if actor_id is None or self._registry.get(actor_id) is None:
            if request.count == 0:
                if self._keeper.forget_failed(actor_id or request.actor_ref):
                    self._keeper.save()
                return codec.ack()
            parse_ref(request.actor_ref)
            token = self._keeper.begin(
                "start", request.actor_ref, count=request.count, annotations=request.annotations
            )
            self._spawn_start(request.actor_ref, request.count, request.annotations, token)
            return codec.ack()
        token = self._keeper.begin(
            "scale",
            request.actor_ref,
            actor_id=actor_id,
            count=request.count,
            annotations=request.annotations,
        )
        self._background.spawn(
            self._scale_work(actor_id, request.count, request.annotations, token),
            what=f"scale of {actor_id}",
        )
        return codec.ack()

    async def _scale_work(
        self, actor_id: str, count: int, annotations: Mapping[str, str], token: int
    ) -> None:
        actor = self._registry.get(actor_id)
        if actor is None:
            self._keeper.settle(token)
            return
        before = {i.instance_id: i for i in actor.instances}
        try:
            after = await self._registry.scale(actor_id, count, annotations or None)
        except Exception as exc:
            reason = self._background.report(exc, f"scale of {actor_id}")
            failed = events.actor_start_failed(actor_ref=actor.image_ref, error=reason)
            self.emit("actor_start_failed", failed)
            return
        finally:
            self._keeper.settle(token)
        await self._on_change()
        now = {i.instance_id for i in after.instances} if after else set()
        self._stopped_events(actor_id, [i for key, i in before.items() if key not in now])
        if after is not None:
            for instance in after.instances:
                if instance.instance_id not in before:
                    self._started_event(after, instance)

    async def _stop_actor(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_stop_actor(body)
        self._check_host(request.host_id)
        actor_id = self._actor_for_ref(request.actor_ref)
        if actor_id is None:
            if self._keeper.forget_failed(request.actor_ref):
                self._keeper.save()
                return codec.ack()
            return codec.ack(False, f"actor {request.actor_ref} is not running on this host")
        actor = self._registry.get(actor_id)
        assert actor is not None  # _actor_for_ref only names running actors
        matching = sum(1 for i in actor.instances if _carries(i, request.annotations))
        stopping = min(request.count, matching) if request.count else matching
        token = self._keeper.begin(
            "scale", actor.image_ref, actor_id=actor_id, count=len(actor.instances) - stopping
        )
        self._background.spawn(
            self._stop_work(actor_id, request.count, request.annotations, token),
            what=f"stop of {actor_id}",
        )
        return codec.ack()

    async def _stop_work(
        self, actor_id: str, count: int, annotations: Mapping[str, str], token: int
    ) -> None:
        try:
            stopped = await self._registry.stop(actor_id, count or None, annotations or None)
        finally:
            self._keeper.settle(token)
        await self._on_change()
        self._stopped_events(actor_id, stopped)

    def _actor_for_ref(self, actor_ref: str) -> str | None:
        for actor in self._registry.running():
            if actor.image_ref == actor_ref or actor.actor_id == actor_ref:
                return actor.actor_id
        return None

    async def _update(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_update_actor(body)
        self._check_host(request.host_id)
        parse_ref(request.new_actor_ref)
        actor_id = request.actor_id
        if actor_id is None or self._registry.get(actor_id) is None:
            return codec.ack(False, f"actor {actor_id or '(none given)'} is not running here")
        token = self._keeper.begin("update", request.new_actor_ref, actor_id=actor_id)
        self._background.spawn(
            self._update_work(actor_id, request.new_actor_ref, token),
            what=f"update of {actor_id}",
        )
        return codec.ack()

    async def _update_work(self, actor_id: str, new_ref: str, token: int) -> None:
        try:
            actor = await self._registry.update(actor_id, new_ref)
        except Exception as exc:
            reason = self._background.report(exc, f"update of {actor_id}")
            self.emit(
                "actor_update_failed",
                events.actor_update_failed(
                    public_key=actor_id, revision=0, instance_id="", reason=reason
                ),
            )
            return
        finally:
            self._keeper.settle(token)
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
        request = codec.parse_stop_host(body)
        self._check_host(request.host_id)
        # Answer first: the requester learns the stop was accepted before we go away.
        asyncio.get_running_loop().call_later(0.1, self._on_stop)
        return codec.ack()

    async def _put_link(self, body: bytes) -> dict[str, Any] | None:
        link = codec.parse_linkdef_put(body)
        if self._check_link is not None:
            self._check_link(link)
        previous = self._links.find(link.actor_id, link.contract_id, link.link_name)
        self._links.put(link)
        try:
            self._keeper.save()
        except StateError as exc:
            self._restore_link(link, previous)
            raise StateError(f"{exc}; the link was not changed") from exc
        await self._on_change()
        self.emit("linkdef_set", events.linkdef_set(link))
        return codec.ack()

    async def _del_link(self, body: bytes) -> dict[str, Any] | None:
        request = codec.parse_linkdef_del(body)
        removed = self._links.delete(request.actor_id, request.contract_id, request.link_name)
        if removed is not None:
            try:
                self._keeper.save()
            except StateError as exc:
                self._links.put(removed)
                raise StateError(f"{exc}; the link was not deleted") from exc
            await self._on_change()
        provider = removed.provider_id if removed else ""
        self.emit("linkdef_deleted", events.linkdef_deleted(request, provider))
        return codec.ack()

    def _restore_link(
        self, link: codec.LinkDefinition, previous: codec.LinkDefinition | None
    ) -> None:
        if previous is None:
            self._links.delete(link.actor_id, link.contract_id, link.link_name)
        else:
            self._links.put(previous)

    _handlers: ClassVar[
        dict[ControlKind, Callable[[ControlServer, bytes], Awaitable[dict[str, Any] | None]]]
    ] = {
        ControlKind.PING_HOSTS: _ping,
        ControlKind.GET_INVENTORY: _inventory,
        ControlKind.GET_CLAIMS: _claims,
        ControlKind.GET_LINKS: _get_links,
        ControlKind.AUCTION_ACTOR: _auction,
        ControlKind.LAUNCH_ACTOR: _start,
        ControlKind.STOP_ACTOR: _stop_actor,
        ControlKind.SCALE_ACTOR: _scale,
        ControlKind.UPDATE_ACTOR: _update,
        ControlKind.STOP_HOST: _stop_host,
        ControlKind.LINKDEFS_PUT: _put_link,
        ControlKind.LINKDEFS_DEL: _del_link,
    }


def _carries(instance: ActorInstance, annotations: Mapping[str, str]) -> bool:
    return all(instance.annotations.get(k) == v for k, v in annotations.items())


def _actor_info(actor: RunningActor, quarantined: Mapping[str, Any]) -> codec.ActorInfo:
    revision = actor.claims.rev or 0 if actor.claims else 0

    def held(instance: ActorInstance) -> dict[str, str] | None:
        info = quarantined.get(instance.sandbox_key(actor.actor_id))
        if info is None:
            return None
        return {"reason": info.reason, "until": events.rfc3339(info.until)}

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
                quarantined=held(instance),
            )
            for instance in actor.instances
        ),
    )
