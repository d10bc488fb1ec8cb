"""``wasmcloud:messaging`` served by the device's own NATS leaf node.

Operations and payloads (wasmCloud/interfaces:messaging/messaging.smithy and the generated
messaging/rust/src/messaging.rs; the NATS provider's behaviour from
wasmCloud/capability-providers:nats/src/main.rs):

* ``Messaging.Publish`` — ``PubMessage {subject: str, replyTo?: str, body: bin}`` → empty
  response. Returns once the local server has the message (publish, then flush).
* ``Messaging.Request`` — ``RequestMessage {subject: str, body: bin, timeoutMs: u32}`` →
  ``ReplyMessage {subject: str, replyTo?: str, body: bin}``.

``body`` may be absent (serde ``default`` in the generated code: empty body). Bare method
names (``Publish``) are accepted too. The client is the agent's connection to the **local**
leaf, so actors keep messaging while the uplink is down; what reaches the cloud is decided
by the leaf's own import/export rules, not here.

Subjects are checked before anything is sent: not empty, at most
``MessagingLimits.max_subject_bytes`` UTF-8 bytes, no whitespace or control characters, no
empty tokens, no wildcards (``*``, ``>``), and not under a denied prefix. By default ``$``
(JetStream, KV, system and service APIs, which would let an actor delete streams or bypass
the keyvalue capability) and ``wasmbus.`` (the lattice's control, event and RPC subjects)
are denied. ``replyTo`` gets the same checks, since a responder publishes there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from agent.capabilities.base import operation_name
from agent.capabilities.codec import U32_MAX, Struct, decode_struct, encode
from agent.errors import (
    CapabilityTimeout,
    CapabilityUnavailable,
    PayloadError,
    UnknownOperation,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["MESSAGING", "MessagingCapability", "MessagingLimits", "check_subject"]

MESSAGING: Final = "wasmcloud:messaging"
_INTERFACE: Final = "Messaging"
_FORBIDDEN_CHARS: Final = frozenset(" \t\r\n\f\v*>") | {chr(c) for c in range(32)} | {"\x7f"}


@dataclass(frozen=True, slots=True)
class MessagingLimits:
    """Bounds on what actors may send.

    ``default_timeout`` (seconds) applies to a request with ``timeoutMs`` 0, which would
    otherwise time out at once; every request timeout is clamped to ``max_timeout``, and
    the actor's own invocation deadline still bounds the wait.
    """

    max_subject_bytes: int = 256
    default_timeout: float = 2.0
    max_timeout: float = 10.0
    flush_timeout: float = 2.0
    denied_prefixes: tuple[str, ...] = ("$", "wasmbus.")

    def __post_init__(self) -> None:
        if self.max_subject_bytes < 1:
            raise ValueError("max_subject_bytes must be at least 1")
        if not 0 < self.default_timeout <= self.max_timeout:
            raise ValueError("need 0 < default_timeout <= max_timeout")
        if self.flush_timeout <= 0:
            raise ValueError("flush_timeout must be positive")


def check_subject(subject: str, limits: MessagingLimits, what: str = "subject") -> str:
    """Return ``subject`` if an actor may publish to it, else raise :class:`PayloadError`.

    The message starts with ``what`` (``subject``, ``replyTo``) so the actor knows which
    field was refused.
    """
    if not subject:
        raise PayloadError(f"{what} is empty")
    size = len(subject.encode())
    if size > limits.max_subject_bytes:
        raise PayloadError(f"{what} is {size} bytes long, the limit is {limits.max_subject_bytes}")
    bad = sorted(set(subject) & _FORBIDDEN_CHARS)
    if bad:
        shown = ", ".join(repr(char) for char in bad)
        raise PayloadError(
            f"{what} {subject!r} contains {shown}: wildcards, whitespace and control "
            "characters are not allowed"
        )
    if "" in subject.split("."):
        raise PayloadError(f"{what} {subject!r} has an empty token (leading, trailing or '..')")
    for prefix in limits.denied_prefixes:
        if subject.startswith(prefix):
            raise PayloadError(f"{what} {subject!r} is reserved (prefix {prefix!r})")
    return subject


class MessagingCapability:
    """``wasmcloud:messaging`` over a connected nats-py client to the local leaf node."""

    contract_id: str = MESSAGING

    def __init__(self, client: Client, limits: MessagingLimits | None = None) -> None:
        self._nc = client
        self.limits = limits or MessagingLimits()

    async def handle(self, actor_id: str, operation: str, payload: bytes) -> bytes:
        """Serve ``Messaging.Publish`` or ``Messaging.Request`` (see the module docstring)."""
        where = f"{MESSAGING} {operation}"
        match operation_name(operation, _INTERFACE):
            case "Publish":
                await self._publish(decode_struct(payload, where), where)
                return b""
            case "Request":
                return await self._request(decode_struct(payload, where), where)
            case _:
                raise UnknownOperation(
                    f"{MESSAGING} has no operation {operation!r} "
                    "(supported: Messaging.Publish, Messaging.Request)"
                )

    def _subject(self, value: str, where: str, what: str) -> str:
        try:
            return check_subject(value, self.limits, what)
        except PayloadError as exc:
            raise PayloadError(f"{where}: {exc}") from None

    async def _publish(self, message: Struct, where: str) -> None:
        subject = self._subject(message.string("subject"), where, "subject")
        reply_to = message.optional_string("replyTo")
        if reply_to is not None:
            self._subject(reply_to, where, "replyTo")
        body = message.blob("body", b"")
        self._check_size(body, where)
        with _map_nats_errors(where, subject):
            await self._nc.publish(subject, body, reply=reply_to or "")
            # "The function returns after the message has been sent" (messaging.smithy):
            # a flush is one PING/PONG with the local leaf.
            await self._nc.flush(timeout=self.limits.flush_timeout)  # type: ignore[arg-type]

    async def _request(self, message: Struct, where: str) -> bytes:
        subject = self._subject(message.string("subject"), where, "subject")
        body = message.blob("body", b"")
        timeout_ms = message.integer("timeoutMs", 0, U32_MAX)
        self._check_size(body, where)
        timeout = (
            self.limits.default_timeout
            if timeout_ms == 0
            else min(timeout_ms / 1000, self.limits.max_timeout)
        )
        with _map_nats_errors(where, subject, timeout):
            reply = await self._nc.request(subject, body, timeout=timeout)
        response: dict[str, object] = {"subject": reply.subject, "body": bytes(reply.data)}
        if reply.reply:
            response["replyTo"] = reply.reply
        return encode(response)

    def _check_size(self, body: bytes, where: str) -> None:
        limit = self._nc.max_payload
        # max_payload is 0 before the first INFO; nats-py then checks nothing either.
        if limit and len(body) > limit:
            raise PayloadError(
                f"{where}: body is {len(body)} bytes, the NATS max payload is {limit}"
            )


@contextlib.contextmanager
def _map_nats_errors(where: str, subject: str, timeout: float | None = None) -> Iterator[None]:
    """Turn nats-py errors into capability errors naming the operation and subject."""
    import nats.errors  # loaded with the client already; kept local for import-light modules

    try:
        yield
    except nats.errors.NoRespondersError as exc:
        raise CapabilityUnavailable(f"{where}: no responders on subject {subject!r}") from exc
    except nats.errors.TimeoutError as exc:
        if timeout is None:
            raise CapabilityTimeout(
                f"{where}: the local NATS server did not confirm the publish to {subject!r}"
            ) from exc
        raise CapabilityTimeout(
            f"{where}: request to {subject!r} timed out after {round(timeout * 1000)} ms"
        ) from exc
    except nats.errors.MaxPayloadError as exc:
        raise PayloadError(f"{where}: body too large for NATS ({exc})") from exc
    except nats.errors.Error as exc:
        raise CapabilityUnavailable(f"{where}: local NATS unavailable ({exc})") from exc
