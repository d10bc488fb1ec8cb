"""Messages on the device's lattice reach actors: the host as wasmCloud's messaging provider.

A link definition from an actor to ``wasmcloud:messaging`` whose values carry
``SUBSCRIPTION=subj1,subj2|group`` makes the host subscribe on its own connection to the
local leaf and deliver every message to the actor as ``MessageSubscriber.HandleMessage``
with the msgpack ``SubMessage {subject, replyTo?, body: bin}`` the wasmCloud NATS
provider sends (wasmCloud/interfaces:messaging/messaging.smithy; link values as the
provider reads them: wasmCloud/capability-providers:nats). ``subject|group`` makes one
subject a queue subscription; ``QUEUE`` (or the older provider's ``QUEUEGROUP_NAME``)
names a group for every subject without one. Works offline: nothing leaves the device.

Rules, each checked where it can be:

* **What may be subscribed** (:func:`parse_subscriptions`, at ``linkdefs.put``): valid NATS
  subjects, wildcards as whole tokens, a literal first token, and nothing under
  :data:`DENIED_PREFIXES` (``$`` — JetStream, KV, system APIs —, ``wasmbus.`` — the lattice
  itself — and the agent's reply subjects), so an actor never reads control traffic, RPC
  payloads or the agent's replies. A first-token wildcard (``>``, ``*.rpc.>``) would match
  those too, so it is refused as well.
* **Who may receive** (:meth:`Subscriptions.check_link` at put time, and before every
  delivery): the actor's claims must list ``wasmcloud:messaging``. A link put while the
  actor is not on this host is stored and waits; it subscribes once the actor runs with
  the claim.
* **Never block the agent**: each link has a bounded queue (:data:`QUEUE_LIMIT`); the
  NATS callback only appends, and when the queue is full the **oldest** message is
  dropped and counted (fresh telemetry is worth more than stale). :data:`CONCURRENCY`
  deliveries per link are in flight at once (the sandbox pipelines them).
* **Errors from the actor** (guest errors, traps, timeouts) are counted and logged
  rate-limited; the subscription carries on.
* **Follows the link table**: :meth:`Subscriptions.sync` runs at start-up and after every
  link or actor change, so subscriptions come back after a restart (links are desired
  state) and go away with their link or actor.

Counts per link are in :meth:`Subscriptions.health` (``lattice-edge status``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.background import Background
from agent.capabilities.codec import encode
from agent.capabilities.messaging import MESSAGING
from agent.errors import ControlRequestError, LatticeEdgeError
from agent.lattice.actors import ActorRegistry
from agent.lattice.control_codec import LinkDefinition
from agent.lattice.hostcalls import LinkTable
from agent.leaf.access import AGENT_INBOX_PREFIX
from agent.logs import RateLimiter, escape

__all__ = [
    "CONCURRENCY",
    "DENIED_PREFIXES",
    "HANDLE_MESSAGE",
    "QUEUE_LIMIT",
    "LinkState",
    "SubscriptionSpec",
    "Subscriptions",
    "encode_sub_message",
    "parse_subscriptions",
]

logger = logging.getLogger("lattice_edge.subscriptions")

HANDLE_MESSAGE: Final = "MessageSubscriber.HandleMessage"
QUEUE_LIMIT: Final = 1024  # messages waiting per link; beyond it the oldest are dropped
CONCURRENCY: Final = 4  # deliveries in flight per link
MAX_SUBSCRIPTIONS: Final = 32  # subjects per link
MAX_SUBJECT_BYTES: Final = 256
DENIED_PREFIXES: Final = ("$", "wasmbus.", f"{AGENT_INBOX_PREFIX}.")

_SUBSCRIPTION_KEYS: Final = ("SUBSCRIPTION",)
_QUEUE_KEYS: Final = ("QUEUE", "QUEUEGROUP_NAME")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_\-.:]{1,64}$")
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


# --- link values (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One subject of a link's ``SUBSCRIPTION`` value, with its queue group (if any)."""

    subject: str
    queue: str = ""

    def __str__(self) -> str:
        return f"{self.subject}|{self.queue}" if self.queue else self.subject


def _value(values: Mapping[str, str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of ``keys`` present in ``values``, matched case-insensitively."""
    by_upper = {key.upper(): (key, value) for key, value in values.items()}
    for key in keys:
        if key in by_upper:
            return by_upper[key]
    return None


def _check_subject(subject: str) -> None:
    what = f"SUBSCRIPTION subject {escape(subject)!r}"
    if not subject:
        raise ControlRequestError("SUBSCRIPTION has an empty subject")
    if len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise ControlRequestError(f"{what} is longer than {MAX_SUBJECT_BYTES} bytes")
    if _BAD_CHARS.search(subject):
        raise ControlRequestError(f"{what} contains whitespace or control characters")
    tokens = subject.split(".")
    if "" in tokens:
        raise ControlRequestError(f"{what} has an empty token (leading, trailing or '..')")
    for index, token in enumerate(tokens):
        if token == ">" and index != len(tokens) - 1:
            raise ControlRequestError(f"{what}: '>' may only be the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise ControlRequestError(f"{what}: wildcards must be whole tokens")
    if tokens[0] in ("*", ">"):
        raise ControlRequestError(
            f"{what} starts with a wildcard, which would also match the lattice's own "
            "subjects; start with a literal token (sensors.>)"
        )
    for prefix in DENIED_PREFIXES:
        if subject.startswith(prefix) or subject == prefix.rstrip("."):
            raise ControlRequestError(f"{what} is reserved (prefix {prefix!r})")


def _check_queue(queue: str, where: str) -> str:
    if not _QUEUE_NAME.match(queue):
        raise ControlRequestError(
            f"{where} queue group {escape(queue)!r} must be 1-64 letters, digits or _-.:"
        )
    return queue


def parse_subscriptions(values: Mapping[str, str]) -> tuple[SubscriptionSpec, ...]:
    """The subscriptions a messaging link asks for; empty when it asks for none.

    Raises:
        ControlRequestError: a subject or queue group that may not be subscribed; the
            message names it.
    """
    found = _value(values, _SUBSCRIPTION_KEYS)
    if found is None or not found[1].strip():
        return ()
    default_queue = ""
    queue_value = _value(values, _QUEUE_KEYS)
    if queue_value is not None and queue_value[1].strip():
        default_queue = _check_queue(queue_value[1].strip(), queue_value[0])
    specs: list[SubscriptionSpec] = []
    for item in found[1].split(","):
        subject, bar, queue = item.strip().partition("|")
        subject = subject.strip()
        _check_subject(subject)
        queue = _check_queue(queue.strip(), "SUBSCRIPTION") if bar else default_queue
        spec = SubscriptionSpec(subject, queue)
        if spec not in specs:
            specs.append(spec)
    if len(specs) > MAX_SUBSCRIPTIONS:
        raise ControlRequestError(
            f"SUBSCRIPTION lists {len(specs)} subjects; at most {MAX_SUBSCRIPTIONS} per link"
        )
    return tuple(specs)


def encode_sub_message(subject: str, reply_to: str, body: bytes) -> bytes:
    """The ``SubMessage`` for ``HandleMessage`` (``replyTo`` left out when there is none)."""
    message: dict[str, object] = {"subject": subject, "body": body}
    if reply_to:
        message["replyTo"] = reply_to
    return encode(message)


# --- the subscriptions ------------------------------------------------------------------


class LinkState(enum.Enum):
    """Where a messaging link's subscriptions stand."""

    SUBSCRIBED = "subscribed"
    WAITING = "waiting for the actor"  # the actor does not run on this host
    REFUSED = "refused: the actor lacks the wasmcloud:messaging claim"
    FAILED = "subscribing failed; retried at the next link or actor change"


_Message = tuple[str, str, bytes]  # subject, reply, body


@dataclass(eq=False)
class _Delivery:
    """One link's live subscriptions, queue and counters."""

    link: LinkDefinition
    specs: tuple[SubscriptionSpec, ...]
    queue: deque[_Message] = field(default_factory=lambda: deque(maxlen=QUEUE_LIMIT))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    nats_subs: list[Any] = field(default_factory=list)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    stopped: bool = False
    received: int = 0
    delivered: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str | None = None

    async def on_message(self, msg: Any) -> None:
        """The NATS callback: queue the message, never wait (drop the oldest when full)."""
        if self.stopped:
            return
        self.received += 1
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # deque(maxlen) pushes the oldest out
        self.queue.append((msg.subject, msg.reply or "", bytes(msg.data)))
        self.wake.set()

    async def next_message(self) -> _Message | None:
        """The oldest queued message; None once the link is stopped."""
        while not self.stopped:
            if self.queue:
                return self.queue.popleft()
            self.wake.clear()
            await self.wake.wait()
        return None


_Key = tuple[str, str, str]


def _key(link: LinkDefinition) -> _Key:
    return (link.actor_id, link.contract_id, link.link_name)


class Subscriptions:
    """The host's messaging subscriptions, following the link table and the actors."""

    def __init__(
        self,
        nats_client: Any,
        registry: ActorRegistry,
        links: LinkTable,
        background: Background,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._nc = nats_client
        self._registry = registry
        self._links = links
        self._background = background
        self._limiter = limiter or RateLimiter()
        self._live: dict[_Key, _Delivery] = {}
        self._states: dict[_Key, LinkState] = {}
        self._failures: dict[_Key, str] = {}  # why subscribing failed, per link
        self._lock = asyncio.Lock()

    # --- checks --------------------------------------------------------------------------

    def check_link(self, link: LinkDefinition) -> None:
        """Refuse a messaging link that could never be served (called before it is stored).

        Raises:
            ControlRequestError: a subject or group that may not be subscribed, or an actor
                running here whose claims lack ``wasmcloud:messaging``.
        """
        if link.contract_id != MESSAGING:
            return
        specs = parse_subscriptions(link.values)
        actor = self._registry.get(link.actor_id)
        if specs and actor is not None and MESSAGING not in actor.caps:
            raise ControlRequestError(
                f"actor {link.actor_id} is not allowed to use {MESSAGING}: missing capability "
                "claim, so it cannot receive messages"
            )

    def _may_receive(self, actor_id: str) -> bool:
        actor = self._registry.get(actor_id)
        return actor is not None and MESSAGING in actor.caps

    # --- following the link table --------------------------------------------------------

    async def sync(self) -> None:
        """Subscribe for every messaging link whose actor runs here; drop the rest."""
        async with self._lock:
            wanted: dict[_Key, tuple[LinkDefinition, tuple[SubscriptionSpec, ...]]] = {}
            states: dict[_Key, LinkState] = {}
            for link in self._links.all():
                if link.contract_id != MESSAGING:
                    continue
                try:
                    specs = parse_subscriptions(link.values)
                except ControlRequestError as exc:  # stored before this check existed
                    self._limiter.log(
                        logger, logging.ERROR, "bad-link", "messaging link of %s ignored: %s",
                        link.actor_id, exc,
                    )  # fmt: skip
                    continue
                if not specs:
                    continue
                key = _key(link)
                actor = self._registry.get(link.actor_id)
                if actor is None:
                    states[key] = LinkState.WAITING
                elif MESSAGING not in actor.caps:
                    states[key] = LinkState.REFUSED
                    if self._states.get(key) is not LinkState.REFUSED:
                        logger.warning(
                            "not subscribing for %s: its claims lack %s", link.actor_id, MESSAGING
                        )
                else:
                    states[key] = LinkState.SUBSCRIBED
                    wanted[key] = (link, specs)
            for key, delivery in list(self._live.items()):
                if key not in wanted or wanted[key][1] != delivery.specs:
                    await self._stop(self._live.pop(key))
            for key, (link, specs) in wanted.items():
                if key in self._live:
                    continue
                try:
                    self._live[key] = await self._start(link, specs)
                except Exception as exc:  # nats-py raises its own types; never fatal here
                    states[key] = LinkState.FAILED
                    self._failures[key] = f"{type(exc).__name__}: {exc}"
                    self._limiter.log(
                        logger, logging.ERROR, "subscribe", "cannot subscribe for %s: %s",
                        link.actor_id, self._failures[key],
                    )  # fmt: skip
            self._failures = {k: v for k, v in self._failures.items() if k in states}
            self._states = states

    async def close(self) -> None:
        """Unsubscribe everything (host shutdown)."""
        async with self._lock:
            for key in list(self._live):
                await self._stop(self._live.pop(key))
            self._states = {}

    async def _start(self, link: LinkDefinition, specs: tuple[SubscriptionSpec, ...]) -> _Delivery:
        delivery = _Delivery(link, specs)
        try:
            for spec in specs:
                delivery.nats_subs.append(
                    await self._nc.subscribe(spec.subject, queue=spec.queue, cb=delivery.on_message)
                )
        except BaseException:
            await self._stop(delivery)
            raise
        for number in range(CONCURRENCY):
            delivery.workers.append(
                self._background.spawn(
                    self._deliver(delivery), what=f"messages for {link.actor_id} #{number}"
                )
            )
        logger.info(
            "actor %s subscribed to %s", link.actor_id, ", ".join(str(spec) for spec in specs)
        )
        return delivery

    async def _stop(self, delivery: _Delivery) -> None:
        delivery.stopped = True
        delivery.queue.clear()
        delivery.wake.set()  # workers finish the delivery in hand and return
        for sub in delivery.nats_subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # nats-py: the connection may be closing
                logger.debug("unsubscribing %s: %s", sub.subject, exc)
        delivery.nats_subs.clear()
        if delivery.workers:
            logger.info("actor %s unsubscribed", delivery.link.actor_id)

    # --- delivery ------------------------------------------------------------------------

    async def _deliver(self, delivery: _Delivery) -> None:
        actor_id = delivery.link.actor_id
        while (message := await delivery.next_message()) is not None:
            subject, reply, body = message
            if not self._may_receive(actor_id):  # stopped or replaced since the last sync
                delivery.dropped += 1
                continue
            try:
                await self._registry.invoke(
                    actor_id, HANDLE_MESSAGE, encode_sub_message(subject, reply, body)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an actor's failure never ends the subscription
                delivery.errors += 1
                delivery.last_error = (
                    str(exc)
                    if isinstance(exc, LatticeEdgeError)
                    else (f"internal error ({type(exc).__name__})")
                )
                self._report(actor_id, exc)
            else:
                delivery.delivered += 1

    def _report(self, actor_id: str, exc: Exception) -> None:
        key = f"{actor_id}:{type(exc).__name__}"
        if isinstance(exc, LatticeEdgeError):
            self._limiter.log(
                logger, logging.WARNING, key, "actor %s failed to handle a message: %s",
                actor_id, escape(str(exc)),
            )  # fmt: skip
            return
        allowed, skipped = self._limiter.check(key)
        if allowed:
            more = f" (and {skipped:,} more)" if skipped else ""
            logger.error("delivering to %s failed unexpectedly%s", actor_id, more, exc_info=exc)

    # --- reporting -----------------------------------------------------------------------

    def health(self) -> list[dict[str, Any]]:
        """Every messaging link with subscriptions: its state and counters."""
        report: list[dict[str, Any]] = []
        for key, state in sorted(self._states.items()):
            entry: dict[str, Any] = {"actor_id": key[0], "link_name": key[2], "state": state.value}
            if state is LinkState.FAILED:
                entry["error"] = self._failures.get(key)
            delivery = self._live.get(key)
            if delivery is not None:
                entry.update(
                    subjects=[str(spec) for spec in delivery.specs],
                    received=delivery.received,
                    delivered=delivery.delivered,
                    dropped=delivery.dropped,
                    errors=delivery.errors,
                    queued=len(delivery.queue),
                    last_error=delivery.last_error,
                )
            report.append(entry)
        return report
