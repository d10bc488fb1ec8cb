"""Which outbox messages went upstream and which were lost before they could. Pure.

The outbox is a work-queue stream: a message leaves it when the forwarder acks it (after
the hub's PubAck) or when the budget discards it. The ledger keeps one cursor,
``accounted``: every sequence up to it was either forwarded or counted as dropped. Two
things move it, and each sequence is counted at most once:

* a forwarded (or refused) message ``seq``: anything between the cursor and ``seq`` left
  the stream without reaching us, so it was dropped;
* the stream's state: everything below both its first sequence and the lowest sequence
  the forwarder still holds in flight is gone, so what lies above the cursor was dropped.

A message the forwarder holds in flight when the budget discards it is not counted: it
still reaches the hub, from memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Ledger"]


@dataclass(slots=True)
class Ledger:
    """Counts of what happened to the outbox's messages, and the ``accounted`` cursor."""

    accounted: int = 0
    forwarded: int = 0
    dropped: int = 0  # discarded by the outbox's budget (size or age) before forwarding
    refused: int = 0  # the hub refused them for good (e.g. too large); skipped

    def settle_forwarded(self, seq: int) -> int:
        """``seq`` reached the hub; return how many before it were found dropped.

        A ``seq`` at or below the cursor was forwarded before (its local ack was lost, so
        the outbox delivered it again and the hub found it a duplicate): nothing changes.
        """
        if seq <= self.accounted:
            return 0
        lost = self._advance(seq)
        self.accounted = seq
        self.forwarded += 1
        return lost

    def settle_refused(self, seq: int) -> int:
        """``seq`` was skipped because the hub refuses it; return the dropped before it."""
        if seq <= self.accounted:
            return 0
        lost = self._advance(seq)
        self.accounted = seq
        self.refused += 1
        return lost

    def settle_stream(self, first_seq: int, lowest_held: int | None) -> int:
        """The stream starts at ``first_seq``; return how many newly count as dropped."""
        floor = first_seq if lowest_held is None else min(first_seq, lowest_held)
        return self._advance(floor)

    def _advance(self, seq: int) -> int:
        """Count every sequence strictly between the cursor and ``seq`` as dropped."""
        gap = seq - self.accounted - 1
        if gap <= 0:
            return 0
        self.dropped += gap
        self.accounted = seq - 1
        return gap

    def to_json(self) -> dict[str, int]:
        """For the forwarder's state file."""
        return {
            "accounted": self.accounted,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "refused": self.refused,
        }

    @classmethod
    def from_json(cls, data: Any) -> Ledger:
        """Read a state file's contents; anything malformed counts as a fresh ledger."""
        if not isinstance(data, dict):
            return cls()
        values: dict[str, int] = {}
        for key in ("accounted", "forwarded", "dropped", "refused"):
            value = data.get(key, 0)
            values[key] = value if isinstance(value, int) and value >= 0 else 0
        return cls(**values)
