"""What the forwarder reads and writes on the wire, as pure functions with no I/O.

* :func:`upstream_headers` — the headers a message carries upstream: the producer's own
  ``Nats-Msg-Id`` moves to ``Lattice-Edge-Origin-Msg-Id``, the hub's ``Nats-Msg-Id``
  becomes ``{host}:{outbox sequence}``, other JetStream publish directives (``Nats-…``,
  e.g. ``Nats-Expected-Stream``, which were meant for the outbox and would make the hub
  refuse or roll up) are dropped, and every other header goes unchanged.
* :func:`parse_delivery` — the stream sequence and timestamp in the reply subject of a
  message a JetStream consumer delivers (``$JS.ACK.…``, both the v1 and the 2.14+ v2 form).
* :func:`parse_puback` — the hub stream's answer to a forwarded message.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MSG_ID",
    "ORIGIN_MSG_ID",
    "Delivery",
    "PubAck",
    "PubAckKind",
    "parse_delivery",
    "parse_puback",
    "upstream_headers",
]

MSG_ID = "Nats-Msg-Id"
ORIGIN_MSG_ID = "Lattice-Edge-Origin-Msg-Id"
_MAX_PUBACK = 4096


def upstream_headers(headers: Mapping[str, str] | None, msg_id: str) -> dict[str, str]:
    """The headers of a forwarded message (see the module docstring)."""
    out: dict[str, str] = {}
    origin: str | None = None
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower == "nats-msg-id":
            origin = value
        elif not lower.startswith("nats-"):
            out[name] = value
    if origin is not None:
        out[ORIGIN_MSG_ID] = origin
    out[MSG_ID] = msg_id
    return out


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the reply subject of a delivered JetStream message says about it."""

    stream: str
    stream_seq: int
    deliveries: int
    timestamp_ns: int
    pending: int


def parse_delivery(reply: str) -> Delivery:
    """Parse ``$JS.ACK.…``; raise ValueError for anything else.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``;
    v2 (nats-server 2.14+, the default from 2.15) inserts ``<domain>.<account hash>``
    after ``ACK`` and may end with a random token.
    """
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        raise ValueError(f"'{reply[:80]}' is not a JetStream ack subject")
    if len(tokens) == 9:
        base = 2
    elif len(tokens) in (11, 12):
        base = 4
    else:
        raise ValueError(f"'{reply[:80]}' has {len(tokens)} tokens")
    stream, _consumer, delivered, sseq, _cseq, stamp, pending = tokens[base : base + 7]
    try:
        return Delivery(stream, int(sseq), int(delivered), int(stamp), int(pending))
    except ValueError:
        raise ValueError(f"'{reply[:80]}' has non-numeric sequence fields") from None


class PubAckKind(enum.Enum):
    """How the hub answered a forwarded message."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # stored before (a retry): as good as stored
    REFUSED = "refused"  # the hub's JetStream answered with an error
    NO_RESPONDERS = "no_responders"  # nothing upstream captures the subject (link down?)
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class PubAck:
    """A parsed answer; ``code`` and ``description`` for refusals."""

    kind: PubAckKind
    stream: str | None = None
    seq: int | None = None
    code: int | None = None
    description: str = ""

    @property
    def ok(self) -> bool:
        """The hub holds the message."""
        return self.kind in (PubAckKind.STORED, PubAckKind.DUPLICATE)

    @property
    def permanent(self) -> bool:
        """A refusal that retrying will not change (a 4xx other than 408 and 429)."""
        code = self.code or 0
        return self.kind is PubAckKind.REFUSED and 400 <= code < 500 and code not in (408, 429)


def parse_puback(data: bytes, status: str | None = None) -> PubAck:
    """Parse the hub's answer; ``status`` is the NATS status header, if any (``503``)."""
    if status == "503":
        return PubAck(PubAckKind.NO_RESPONDERS, description="no responders")
    if status:
        return PubAck(PubAckKind.MALFORMED, description=f"status {status[:16]}")
    if len(data) > _MAX_PUBACK:
        return PubAck(PubAckKind.MALFORMED, description="oversized answer")
    try:
        body = json.loads(data)
    except ValueError:
        return PubAck(PubAckKind.MALFORMED, description="not JSON")
    if not isinstance(body, dict):
        return PubAck(PubAckKind.MALFORMED, description="not a JSON object")
    error = body.get("error")
    if error is not None:
        if not isinstance(error, dict):
            return PubAck(PubAckKind.REFUSED, description=str(error)[:200])
        code = error.get("code")
        return PubAck(
            PubAckKind.REFUSED,
            code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            description=str(error.get("description", ""))[:200],
        )
    stream, seq = body.get("stream"), body.get("seq")
    if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return PubAck(PubAckKind.MALFORMED, description="no stream and seq")
    kind = PubAckKind.DUPLICATE if body.get("duplicate") is True else PubAckKind.STORED
    return PubAck(kind, stream=stream, seq=seq)
