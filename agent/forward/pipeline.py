"""One forwarding session: outbox → hub, pipelined, each message acked locally only after
the hub's PubAck, strictly in outbox order.

Three parts share the in-flight queue:

* pull requests to the forwarder's consumer keep up to ``window`` messages (and at most
  :data:`MAX_INFLIGHT_BYTES`) coming; only one request is open at a time;
* each delivered message is published upstream at once, in the order it arrived, with the
  hub's ``Nats-Msg-Id`` and a reply subject naming its outbox sequence;
* the settler waits for the oldest message's PubAck, acks it in the outbox (which removes
  it), and moves on; acks that come early for later messages wait their turn.

A session starts with a window of one message: the first PubAck proves the path (the
hub's interest arrives a moment after the leaf reconnects, and a message sent before it
would be dropped by the leaf while later ones got through, out of order). Any failure —
no responders (the link is down or nothing upstream captures the subject), a PubAck that
does not come in time, a refusal, the link closing, the local connection reconnecting —
ends the session. Nothing is retried inside it: the next session's fresh consumer delivers
everything not yet acked again, in order, and the hub's duplicate window drops what it
already has. A message the hub refuses for good (a 4xx such as "too large") three
sessions in a row is skipped and counted, so one bad message cannot stop the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.forward.codec import PubAck, PubAckKind, parse_delivery, parse_puback, upstream_headers
from agent.forward.outbox import Outbox
from agent.forward.subjects import message_id, upstream_subject

__all__ = [
    "MAX_INFLIGHT_BYTES",
    "EndKind",
    "InFlight",
    "Pipeline",
    "SessionEnded",
]

MAX_INFLIGHT_BYTES = 4 * 1024 * 1024
PULL_EXPIRES_S = 60.0  # an idle session's pull request lingers this long, then is renewed
PULL_GRACE_S = 10.0  # past expiry with no word from the consumer: the request is lost
ACK_TIMEOUT_S = 5.0  # for the oldest message's PubAck, counted from the last progress …
MIN_UPLINK_RATE = 16 * 1024  # … plus its size at this rate, so slow links are not cut off
REFUSE_AFTER = 3
# 409s that mean the consumer is gone, not that a request is over
_FATAL_409 = ("Consumer Deleted", "Consumer is push based", "Server Shutdown")


class EndKind(enum.Enum):
    """Why a session ended."""

    NO_RESPONDERS = "no_responders"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    LINK_CLOSED = "link_closed"
    LOCAL_RECONNECT = "local_reconnect"
    OUTBOX = "outbox"


class SessionEnded(Exception):
    """A session is over; ``progressed`` when it forwarded at least one message."""

    def __init__(self, kind: EndKind, detail: str, *, progressed: bool) -> None:
        super().__init__(f"{kind.value}: {detail}" if detail else kind.value)
        self.kind = kind
        self.detail = detail
        self.progressed = progressed


@dataclass(slots=True)
class InFlight:
    """A message published upstream whose PubAck has not been settled yet."""

    seq: int
    size: int
    ack_subject: str
    sent_at: float
    outcome: PubAck | None = None  # the hub's answer, once it came


class Pipeline:
    """Runs one session on ``nats_client`` until it ends (:meth:`run` raises SessionEnded).

    ``on_forwarded(seq)`` and ``on_refused(seq, why)`` are called before the outbox is told,
    in outbox order; ``refusals`` counts permanent refusals per sequence across sessions.
    """

    def __init__(
        self,
        nats_client: Any,
        outbox: Outbox,
        *,
        host_id: str,
        upstream_prefix: str,
        window: int,
        inbox: str,
        refusals: dict[int, int],
        on_forwarded: Callable[[int], None],
        on_refused: Callable[[int, str], None],
    ) -> None:
        self._nats = nats_client
        self._outbox = outbox
        self._host_id = host_id
        self._prefix = upstream_prefix
        self._window = window
        self._deliver = f"{inbox}.m"
        self._ack_base = f"{inbox}.a"
        self._refusals = refusals
        self._on_forwarded = on_forwarded
        self._on_refused = on_refused
        self.inflight: collections.deque[InFlight] = collections.deque()
        self._by_seq: dict[int, InFlight] = {}
        self._inflight_bytes = 0
        self._limit = 1  # slow start: one message until the path is proven
        self._proven = False
        self._last_progress = 0.0
        self._request_open = False
        self._request_id = 0
        self._request_left = 0
        self._request_deadline = 0.0
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()
        self._head_answered = asyncio.Event()
        self._ended = asyncio.Event()
        self._end: SessionEnded | None = None

    @property
    def lowest_held(self) -> int | None:
        """The oldest outbox sequence this session holds in flight."""
        return self.inflight[0].seq if self.inflight else None

    def interrupt(self, kind: EndKind, detail: str = "") -> None:
        """End the session from outside (the link closed, the connection reconnected)."""
        self._fail(kind, detail)

    def _fail(self, kind: EndKind, detail: str) -> SessionEnded:
        if self._end is None:
            self._end = SessionEnded(kind, detail, progressed=self._proven)
            self._ended.set()
        return self._end

    async def run(self) -> None:
        """Forward until something ends the session; always raises :class:`SessionEnded`."""
        import nats.errors

        subscriptions = []
        try:
            try:
                subscriptions.append(
                    await self._nats.subscribe(f"{self._ack_base}.*", cb=self._on_ack)
                )
                deliveries = await self._nats.subscribe(
                    f"{self._deliver}.*",
                    cb=self._on_delivery,
                    pending_msgs_limit=self._window + 64,
                )
                subscriptions.append(deliveries)
            except (nats.errors.Error, OSError) as exc:
                raise self._fail(EndKind.OUTBOX, f"subscribing: {exc}") from exc
            self._wake.set()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._requester())
                    tasks.create_task(self._settler())
                    tasks.create_task(self._guard())
            except* SessionEnded:
                pass
        finally:
            for subscription in subscriptions:
                # nats-py: the connection may be reconnecting or closed
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        raise self._end or SessionEnded(EndKind.OUTBOX, "ended", progressed=self._proven)

    async def _guard(self) -> None:
        await self._ended.wait()
        assert self._end is not None
        raise self._end

    # --- pulling from the outbox ---------------------------------------------------------

    async def _requester(self) -> None:
        import nats.errors

        while True:
            timeout = None
            if self._request_open:
                timeout = max(0.0, self._request_deadline - time.monotonic())
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # that arrives as the event is set, and the session would never end.
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                detail = "the outbox's consumer stopped answering"
                raise self._fail(EndKind.OUTBOX, detail) from None
            self._wake.clear()
            if self._request_open:
                continue
            free = self._limit - len(self.inflight)
            free_bytes = MAX_INFLIGHT_BYTES - self._inflight_bytes
            if free <= 0 or free_bytes <= 0:
                continue
            if self._proven and self.inflight and free < max(1, self._limit // 4):
                continue  # let acks free a quarter of the window: fewer, larger requests
            self._request_open = True
            self._request_id += 1
            self._request_left = free
            self._request_deadline = time.monotonic() + PULL_EXPIRES_S + PULL_GRACE_S
            body = Outbox.pull_request(free, free_bytes, PULL_EXPIRES_S)
            try:
                await self._nats.publish(
                    self._outbox.next_subject, body, reply=f"{self._deliver}.{self._request_id}"
                )
            except (nats.errors.Error, OSError) as exc:
                raise self._fail(EndKind.OUTBOX, f"pulling from the outbox: {exc}") from exc

    def _request_done(self) -> None:
        self._request_open = False
        self._wake.set()

    async def _on_delivery(self, msg: Any) -> None:
        """A message (or a status) from the forwarder's consumer: forward it at once.

        Only one pull request is open at a time, so every message answers the open one
        (messages carry their own subject; statuses carry the request's reply subject,
        ``….m.<n>``). A status for an earlier request — ``409 Batch Completed`` follows
        the last message of a request that had bytes to spare, on 2.10+ — therefore
        cannot end the one open now. One subscription keeps everything in stream order.
        """
        if self._end is not None:
            return
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status:
            current = msg.subject == f"{self._deliver}.{self._request_id}"
            if status == "100":  # idle heartbeat
                return
            description = str(headers.get("Description", ""))
            if status == "409" and description in _FATAL_409:
                self._fail(EndKind.OUTBOX, f"the outbox's consumer: {description}")
            elif status not in ("404", "408", "409"):
                self._fail(EndKind.OUTBOX, f"the outbox's consumer answered {status} {description}")
            elif current:
                self._request_done()  # no more messages, expired, or the batch is complete
            return
        if self._request_open:
            self._request_left -= 1
            if self._request_left <= 0:
                self._request_done()
        try:
            delivery = parse_delivery(msg.reply or "")
        except ValueError as exc:
            self._fail(EndKind.OUTBOX, str(exc))
            return
        await self._publish(msg, delivery.stream_seq)

    async def _publish(self, msg: Any, seq: int) -> None:
        import nats.errors

        data = bytes(msg.data)
        entry = InFlight(seq, len(data), msg.reply, time.monotonic())
        self.inflight.append(entry)
        self._by_seq[seq] = entry
        self._inflight_bytes += entry.size
        self._sent.set()
        subject = upstream_subject(self._prefix, self._host_id, msg.subject)
        headers = upstream_headers(msg.headers, message_id(self._host_id, seq))
        try:
            await self._nats.publish(
                subject, data, reply=f"{self._ack_base}.{seq}", headers=headers
            )
        except nats.errors.MaxPayloadError:
            self._answered(
                entry, PubAck(PubAckKind.REFUSED, code=413, description="larger than max_payload")
            )
        except (nats.errors.Error, OSError) as exc:
            self._fail(EndKind.TIMEOUT, f"publishing upstream: {exc}")

    # --- PubAcks ------------------------------------------------------------------------

    async def _on_ack(self, msg: Any) -> None:
        try:
            seq = int(msg.subject.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return
        entry = self._by_seq.get(seq)
        if entry is None or entry.outcome is not None:
            return
        status = (msg.headers or {}).get("Status")
        outcome = parse_puback(bytes(msg.data), status)
        self._answered(entry, outcome)
        if outcome.kind is PubAckKind.NO_RESPONDERS:
            # The hub's interest is gone: send nothing more, so whatever reaches the hub
            # later in this session cannot overtake this message.
            self._fail(EndKind.NO_RESPONDERS, "")

    def _answered(self, entry: InFlight, outcome: PubAck) -> None:
        entry.outcome = outcome
        if self.inflight and self.inflight[0] is entry:
            self._head_answered.set()  # only the oldest's answer can move the settler

    async def _settler(self) -> None:
        while True:
            while not self.inflight:
                self._sent.clear()
                await self._sent.wait()
            head = self.inflight[0]
            outcome = head.outcome
            if outcome is None:  # under load the answer is usually there already
                timeout = ACK_TIMEOUT_S + head.size / MIN_UPLINK_RATE
                deadline = max(head.sent_at, self._last_progress) + timeout
                self._head_answered.clear()
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        while head.outcome is None:
                            await self._head_answered.wait()
                            self._head_answered.clear()
                except TimeoutError:
                    detail = f"no PubAck for outbox message {head.seq} within {timeout:.0f} s"
                    raise self._fail(EndKind.TIMEOUT, detail) from None
                outcome = head.outcome
            if outcome.ok:
                self._refusals.pop(head.seq, None)
                self._on_forwarded(head.seq)
                await self._settle(head)
                if not self._proven:
                    self._proven = True
                    self._limit = self._window
                continue
            if outcome.kind is PubAckKind.NO_RESPONDERS:
                raise self._fail(EndKind.NO_RESPONDERS, "")
            if outcome.permanent:
                count = self._refusals[head.seq] = self._refusals.get(head.seq, 0) + 1
                if count >= REFUSE_AFTER:
                    del self._refusals[head.seq]
                    self._on_refused(head.seq, outcome.description)
                    await self._settle(head)
                    continue
            raise self._fail(EndKind.REFUSED, outcome.description or outcome.kind.value)

    async def _settle(self, head: InFlight) -> None:
        """Ack ``head`` in the outbox (removing it there) and free its slot."""
        self.inflight.popleft()
        del self._by_seq[head.seq]
        self._inflight_bytes -= head.size
        self._last_progress = time.monotonic()
        self._wake.set()
        import nats.errors

        try:
            await self._nats.publish(head.ack_subject, b"")
        except (nats.errors.Error, OSError) as exc:
            # Not acked: the outbox delivers it again next session and the hub drops it.
            raise self._fail(EndKind.OUTBOX, f"acking in the outbox: {exc}") from exc
