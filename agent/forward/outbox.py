"""The outbox stream on the leaf's own JetStream, through its JSON API.

Requests go to ``$JS.API.…`` on the host's connection to its leaf: with a JetStream domain
set, that API stays local (the leaf denies it across the link), so creating, reading and
consuming the outbox never touches the uplink. The raw API is used rather than nats-py's
managers so that every field is explicit and the same requests work on nats-server 2.9.10.

The forwarder's consumer is made anew for every forwarding session (:meth:`reset_consumer`):
a work-queue stream holds exactly what has not been forwarded, so a fresh consumer that
delivers everything from the first message restarts cleanly after any failure — messages
a failed session had in flight come first, in order, and the hub drops the ones it already
has by their ``Nats-Msg-Id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.errors import ForwardError
from agent.forward.plan import OutboxPlan

__all__ = ["CONSUMER", "Outbox", "OutboxState", "jetstream_api", "parse_time"]

CONSUMER = "forwarder"
API_TIMEOUT_S = 5.0
ACK_WAIT_S = 3600.0  # a session never wants redelivery: it ends and starts over instead
_NS = 1_000_000_000
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014


@dataclass(frozen=True, slots=True)
class OutboxState:
    """The outbox's contents: what is waiting to be forwarded."""

    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    first_time: float | None  # epoch seconds of the oldest message; None when empty


def parse_time(text: object) -> float | None:
    """An RFC 3339 time from the JetStream API (nanosecond precision) as epoch seconds."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    stamp = text.replace("Z", "+00:00")
    head, dot, rest = stamp.partition(".")
    if dot:  # Python parses at most six fractional digits
        digits = "".join(ch for ch in rest if ch.isdigit())
        stamp = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


class Outbox:
    """Creates and reads the outbox stream and owns the forwarder's consumer."""

    def __init__(self, nats_client: Any, plan: OutboxPlan) -> None:
        self._nats = nats_client
        self.plan = plan

    @property
    def next_subject(self) -> str:
        """Where pull requests for the forwarder's consumer go."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.plan.name}.{CONSUMER}"

    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await jetstream_api(self._nats, subject, body, who="the leaf's JetStream")

    def _config(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "name": plan.name,
            "description": "Lattice Edge outbox: messages waiting to go upstream",
            "subjects": list(plan.subjects),
            "retention": "workqueue",
            "storage": "file",
            "discard": "old",
            "max_bytes": plan.max_bytes,
            "max_age": int(plan.max_age_s * _NS),
            "max_msg_size": plan.max_msg_size,
            "max_msgs": -1,
            "max_consumers": -1,
            "duplicate_window": int(plan.duplicate_window_s * _NS),
            "num_replicas": 1,
        }

    async def ensure(self) -> None:
        """Create the outbox, or bring an existing one to the plan (subjects, limits)."""
        wanted = self._config()
        answer = await self._api(f"STREAM.INFO.{self.plan.name}")
        error = answer.get("error")
        if isinstance(error, dict) and error.get("err_code") == _STREAM_NOT_FOUND:
            _check(await self._api(f"STREAM.CREATE.{self.plan.name}", wanted), "create the outbox")
            return
        _check(answer, "read the outbox")
        current = answer.get("config")
        if not isinstance(current, dict):
            raise ForwardError("the outbox's stream info has no config")
        if current.get("retention") != "workqueue":
            raise ForwardError(
                f"a stream named {self.plan.name} exists with retention "
                f"{current.get('retention')!r}; the outbox must be a work queue (delete it)"
            )
        managed = ("subjects", "discard", "max_bytes", "max_age", "max_msg_size",
                   "duplicate_window")  # fmt: skip
        same = all(_same(current.get(key), wanted[key]) for key in managed)
        if not same:
            merged = {**current, **{key: wanted[key] for key in managed}}
            _check(await self._api(f"STREAM.UPDATE.{self.plan.name}", merged), "update the outbox")

    async def state(self) -> OutboxState:
        """What the outbox holds now."""
        answer = await self._api(f"STREAM.INFO.{self.plan.name}")
        _check(answer, "read the outbox")
        state = answer.get("state")
        if not isinstance(state, dict):
            raise ForwardError("the outbox's stream info has no state")
        messages = _count(state.get("messages"))
        return OutboxState(
            messages=messages,
            bytes=_count(state.get("bytes")),
            first_seq=_count(state.get("first_seq")),
            last_seq=_count(state.get("last_seq")),
            first_time=parse_time(state.get("first_ts")) if messages else None,
        )

    async def reset_consumer(self, window: int) -> int:
        """Replace the forwarder's consumer with a fresh one that delivers everything the
        outbox holds; return the sequence it starts after (the stream's first - 1)."""
        name = self.plan.name
        deleted = await self._api(f"CONSUMER.DELETE.{name}.{CONSUMER}")
        error = deleted.get("error")
        if not (isinstance(error, dict) and error.get("err_code") == _CONSUMER_NOT_FOUND):
            _check(deleted, "delete the forwarder's old consumer")
        config = {
            "durable_name": CONSUMER,
            "name": CONSUMER,
            "description": "Lattice Edge forwarder (recreated every session)",
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(ACK_WAIT_S * _NS),
            "max_deliver": -1,
            "max_ack_pending": window,
            "replay_policy": "instant",
        }
        created = await self._api(
            f"CONSUMER.CREATE.{name}.{CONSUMER}", {"stream_name": name, "config": config}
        )
        _check(created, "create the forwarder's consumer")
        return _floor(created)

    @staticmethod
    def pull_request(batch: int, max_bytes: int, expires_s: float) -> bytes:
        """The body of a pull request for up to ``batch`` messages and ``max_bytes``."""
        body = {"batch": batch, "max_bytes": max_bytes, "expires": int(expires_s * _NS)}
        return json.dumps(body).encode()


async def jetstream_api(
    nats_client: Any,
    subject: str,
    body: dict[str, Any] | None = None,
    *,
    api: str = "$JS.API",
    who: str = "JetStream",
    timeout: float = API_TIMEOUT_S,
) -> dict[str, Any]:
    """One JetStream API request (``{api}.{subject}``) and its decoded JSON answer; errors
    the API reports stay in the answer, failures to get one raise :class:`ForwardError`."""
    import nats.errors

    payload = json.dumps(body).encode() if body is not None else b""
    try:
        reply = await nats_client.request(f"{api}.{subject}", payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise ForwardError(f"{who} does not answer on {api} (is it enabled?)") from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise ForwardError(f"{who} ({subject}): {exc or 'timeout'}") from exc
    try:
        answer = json.loads(reply.data)
    except ValueError as exc:
        raise ForwardError(f"{who} ({subject}) did not answer JSON") from exc
    if not isinstance(answer, dict):
        raise ForwardError(f"{who} ({subject}) answered {str(answer)[:80]}")
    return answer


def _check(answer: dict[str, Any], doing: str) -> None:
    error = answer.get("error")
    if error is not None:
        description = error.get("description") if isinstance(error, dict) else error
        raise ForwardError(f"cannot {doing}: {description}")


def _floor(info: dict[str, Any]) -> int:
    ack_floor = info.get("ack_floor")
    return _count(ack_floor.get("stream_seq")) if isinstance(ack_floor, dict) else 0


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _same(current: object, wanted: object) -> bool:
    if isinstance(current, list) and isinstance(wanted, list):
        return sorted(map(str, current)) == sorted(map(str, wanted))
    return current == wanted
