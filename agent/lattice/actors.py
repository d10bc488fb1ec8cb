"""The actors this host runs: start, scale, update, stop and invoke them.

The registry owns the link between lattice-level actors (public key ``M…``, image
reference, instances with annotations) and sandbox-level instances: every instance is
loaded into the sandbox under its own key ``<actor id>/<instance id>``, so a hostile
instance costs one worker slot, and invocations rotate over the instances. Each module
passes admission (claims, imports, memory clamp) on every load. It knows nothing of NATS
subjects; the control interface turns its results into replies and events.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.errors import ActorError, ActorRefError
from agent.identity.wascap import ActorClaims
from agent.lattice.refs import FetchPolicy, ModuleCache, fetch_module, parse_ref
from agent.runtime.admission import AdmittedModule, admit
from agent.runtime.sandbox import InvocationResult, Sandbox
from agent.runtime.supervision import QuarantineInfo
from agent.state import DesiredActor

if TYPE_CHECKING:
    from agent.lattice.natsclient import NatsClient

__all__ = ["ActorInstance", "ActorRegistry", "RunningActor", "actor_of"]

logger = logging.getLogger("lattice_edge.actors")


def _matching(
    instances: list[ActorInstance], annotations: Mapping[str, str] | None
) -> list[ActorInstance]:
    if not annotations:
        return list(instances)
    return [i for i in instances if all(i.annotations.get(k) == v for k, v in annotations.items())]


def actor_of(sandbox_key: str) -> str:
    """The actor id inside a sandbox key (``<actor id>/<instance id>``)."""
    return sandbox_key.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class ActorInstance:
    """One loaded instance of an actor."""

    instance_id: str
    annotations: Mapping[str, str]
    started_at: float

    def sandbox_key(self, actor_id: str) -> str:
        """The id the sandbox knows this instance by."""
        return f"{actor_id}/{self.instance_id}"


@dataclass(slots=True)
class RunningActor:
    """An actor with at least one instance loaded."""

    actor_id: str
    image_ref: str
    module_sha256: str
    module: AdmittedModule
    instances: list[ActorInstance] = field(default_factory=list)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def claims(self) -> ActorClaims | None:
        """The verified claims (None for an unsigned actor allowed by configuration)."""
        return self.module.claims

    @property
    def name(self) -> str:
        """The claims' name, or the id."""
        return (self.claims.name if self.claims else None) or self.actor_id

    @property
    def caps(self) -> tuple[str, ...]:
        """Capabilities the claims grant."""
        return tuple(self.claims.caps) if self.claims else ()

    def next_instance(self) -> ActorInstance:
        """Round-robin over the instances."""
        return self.instances[next(self._turn) % len(self.instances)]


class ActorRegistry:
    """Actors of this host, loaded into ``sandbox``."""

    def __init__(
        self,
        sandbox: Sandbox,
        cache: ModuleCache,
        *,
        trusted_issuers: Collection[str],
        allow_unsigned: bool,
        max_pages: int,
        nats_client: NatsClient | None = None,
        policy: FetchPolicy | None = None,
        allow_legacy_claims: bool = False,
        pinned_digests: Collection[str] = (),
    ) -> None:
        self.sandbox = sandbox
        self.cache = cache
        self.policy = policy or FetchPolicy(max_bytes=cache.max_bytes)
        self.allow_legacy_claims = allow_legacy_claims
        self.pinned_digests = tuple(pinned_digests)
        self.trusted_issuers = tuple(trusted_issuers)
        self.allow_unsigned = allow_unsigned
        self.max_pages = max_pages
        self.nats_client = nats_client
        self._actors: dict[str, RunningActor] = {}
        self._lock = asyncio.Lock()

    # --- queries ------------------------------------------------------------------------

    def get(self, actor_id: str) -> RunningActor | None:
        """The running actor with this id, if any."""
        return self._actors.get(actor_id)

    def running(self) -> list[RunningActor]:
        """Every running actor, by id."""
        return [self._actors[key] for key in sorted(self._actors)]

    def quarantined(self) -> Mapping[str, QuarantineInfo]:
        """Instances the sandbox holds in quarantine, by sandbox key."""
        return self.sandbox.quarantined()

    async def _release(self, actor: RunningActor) -> int:
        """Bring quarantined instances of ``actor`` back (an operator's scale or update)."""
        released = 0
        for instance in actor.instances:
            key = instance.sandbox_key(actor.actor_id)
            if self.sandbox.release(key):
                await self.sandbox.load(key, actor.module.code)
                released += 1
        if released:
            logger.info("released %d quarantined instance(s) of %s", released, actor.actor_id)
        return released

    def desired(self) -> tuple[DesiredActor, ...]:
        """What should be restored after a restart."""
        return tuple(
            DesiredActor(
                actor_id=actor.actor_id,
                actor_ref=actor.image_ref,
                module_sha256=actor.module_sha256,
                count=len(actor.instances),
                annotations=dict(actor.instances[0].annotations) if actor.instances else {},
            )
            for actor in self.running()
        )

    # --- modules ------------------------------------------------------------------------

    async def fetch(self, actor_ref: str, *, cached_sha256: str | None = None) -> tuple[bytes, str]:
        """The module bytes for ``actor_ref`` and their SHA-256.

        ``cached_sha256`` (from the desired state) is tried first, so a restart needs no
        network; fetched modules are added to the cache.
        """
        if cached_sha256:
            module = await asyncio.to_thread(self.cache.get, cached_sha256)
            if module is not None:
                return module, cached_sha256
        ref = parse_ref(actor_ref)
        if ref.scheme == "sha256":
            module = await asyncio.to_thread(self.cache.get, ref.location)
            if module is None:
                raise ActorRefError(f"{actor_ref} is not in the local module cache")
            return module, ref.location
        module = await fetch_module(ref, self.nats_client, self.policy)
        return module, await asyncio.to_thread(self.cache.put, module)

    def admit(self, module: bytes) -> AdmittedModule:
        """Admission with this host's trust settings (raises ModuleError subclasses)."""
        admitted = admit(
            module,
            trusted_issuers=self.trusted_issuers,
            allow_unsigned=self.allow_unsigned,
            max_pages=self.max_pages,
            max_size=self.policy.max_bytes,
            allow_legacy_claims=self.allow_legacy_claims,
            pinned_digests=self.pinned_digests,
        )
        for warning in admitted.warnings:
            logger.warning("%s: %s", admitted.actor_id, warning)
        return admitted

    # --- lifecycle ----------------------------------------------------------------------

    async def start(
        self,
        actor_ref: str,
        count: int = 1,
        annotations: Mapping[str, str] | None = None,
        *,
        cached_sha256: str | None = None,
    ) -> RunningActor:
        """Start ``count`` more instances of the actor at ``actor_ref``."""
        if count < 1:
            raise ActorError("count must be at least 1")
        module_bytes, digest = await self.fetch(actor_ref, cached_sha256=cached_sha256)
        admitted = self.admit(module_bytes)
        async with self._lock:
            actor = self._actors.get(admitted.actor_id)
            if actor is None:
                actor = RunningActor(admitted.actor_id, actor_ref, digest, admitted)
            elif actor.module_sha256 != digest:
                raise ActorError(
                    f"actor {admitted.actor_id} already runs another module; use update"
                )
            await self._add_instances(actor, count, annotations or {})
            self._actors[actor.actor_id] = actor
        logger.info("started %d instance(s) of %s (%s)", count, actor.name, actor.actor_id)
        return actor

    async def _add_instances(
        self, actor: RunningActor, count: int, annotations: Mapping[str, str]
    ) -> list[ActorInstance]:
        added: list[ActorInstance] = []
        try:
            for _ in range(count):
                instance = ActorInstance(str(uuid.uuid4()), dict(annotations), time.time())
                await self.sandbox.load(instance.sandbox_key(actor.actor_id), actor.module.code)
                actor.instances.append(instance)
                added.append(instance)
        except BaseException:
            # All or nothing: a start that cannot load every instance loads none of them.
            for instance in added:
                actor.instances.remove(instance)
                await self.sandbox.unload(instance.sandbox_key(actor.actor_id))
            raise
        return added

    async def stop(
        self,
        actor_id: str,
        count: int | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> list[ActorInstance]:
        """Stop ``count`` instances (all when None or 0); return the stopped ones.

        With ``annotations`` only instances carrying all of them are candidates.
        """
        async with self._lock:
            actor = self._require(actor_id)
            candidates = _matching(actor.instances, annotations)
            victims = candidates[-count:] if count else candidates
            for instance in victims:
                await self.sandbox.unload(instance.sandbox_key(actor_id))
                actor.instances.remove(instance)
            if not actor.instances:
                del self._actors[actor_id]
        logger.info("stopped %d instance(s) of %s", len(victims), actor_id)
        return victims

    async def scale(
        self, actor_id: str, count: int, annotations: Mapping[str, str] | None = None
    ) -> RunningActor | None:
        """Make ``actor_id`` run exactly ``count`` instances (0 stops them).

        With ``annotations`` the count applies to the instances carrying them (wasmCloud
        0.82 semantics): other instances are left alone, new ones get the annotations.
        """
        actor = self._require(actor_id)
        async with self._lock:
            await self._release(actor)
        current = len(_matching(actor.instances, annotations))
        if count > current:
            return await self.start(
                actor.image_ref,
                count - current,
                annotations or actor.instances[0].annotations,
                cached_sha256=actor.module_sha256,
            )
        if count < current:
            await self.stop(actor_id, current - count, annotations)
        return self._actors.get(actor_id)

    async def update(self, actor_id: str, new_ref: str) -> RunningActor:
        """Replace a running actor's module, keeping its instance count and annotations.

        The new module must carry the same subject key and pass admission; the old
        instances keep serving until the new ones are loaded.
        """
        actor = self._require(actor_id)
        module_bytes, digest = await self.fetch(new_ref)
        admitted = self.admit(module_bytes)
        if admitted.actor_id != actor_id:
            raise ActorError(f"{new_ref} is actor {admitted.actor_id}, not {actor_id}")
        async with self._lock:
            replacement = RunningActor(actor_id, new_ref, digest, admitted)
            old = list(actor.instances)
            for instance in old:
                await self._add_instances(replacement, 1, instance.annotations)
            for instance in old:
                await self.sandbox.unload(instance.sandbox_key(actor_id))
            self._actors[actor_id] = replacement
        logger.info("updated %s to %s", actor_id, new_ref)
        return replacement

    async def stop_all(self) -> None:
        """Stop every actor (host shutdown)."""
        for actor_id in list(self._actors):
            await self.stop(actor_id)

    async def invoke(
        self, actor_id: str, operation: str, payload: bytes, deadline: float | None = None
    ) -> InvocationResult:
        """Invoke one of the actor's instances."""
        actor = self._require(actor_id)
        instance = actor.next_instance()
        return await self.sandbox.invoke(
            instance.sandbox_key(actor_id), operation, payload, deadline
        )

    def _require(self, actor_id: str) -> RunningActor:
        actor = self._actors.get(actor_id)
        if actor is None or not actor.instances:
            raise ActorError(f"actor {actor_id} is not running on this host")
        return actor
