"""The outbox stream's shape, derived from the config and the board's budgets. Pure.

**The disk budget is a bound on the files, not on the messages.** nats-server's file store
frees a block only when every message in it is gone, so a stream's files hold up to one
block of already-forwarded (or discarded) messages beyond ``max_bytes``. Its block size
follows ``max_bytes`` (nats-server 2.9 through 2.15, ``dynBlkSize``): 4 MiB blocks once
``max_bytes`` passes ~128 kB, 32 kB blocks below that. :func:`outbox_capacity` therefore
gives the stream ``budget - 4 MiB - 256 KiB`` (the reserve covers the stream's and the
consumer's metadata), and budgets too small for that get a 127,900-byte stream with small
blocks. ``discard: old`` keeps producers from ever being refused: the oldest messages make
room, and the forwarder counts them as dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.forward.subjects import telemetry_filter

__all__ = ["OUTBOX_STREAM", "OutboxPlan", "outbox_capacity", "outbox_plan"]

OUTBOX_STREAM = "LATTICE_EDGE_OUTBOX"
LARGE_BLOCK = 4 * 1024 * 1024
SMALL_BLOCK = 32_000
SMALL_STREAM_MAX = 127_900  # the largest max_bytes that still gets 32 kB blocks
RESERVE = 256 * 1024
SMALL_RESERVE = 16 * 1024
HEADER_HEADROOM = 1024  # the hub's Nats-Msg-Id and the renamed producer id must still fit
PRODUCER_DEDUP_S = 120.0  # the outbox's own duplicate window, for producers' retries


def outbox_capacity(budget_bytes: int) -> int:
    """The outbox's ``max_bytes`` that keeps its files within ``budget_bytes``."""
    large = budget_bytes - LARGE_BLOCK - RESERVE
    if large > SMALL_STREAM_MAX:
        return large
    small = min(SMALL_STREAM_MAX, budget_bytes - SMALL_BLOCK - SMALL_RESERVE)
    if small <= 0:
        raise ValueError(f"a store-and-forward budget of {budget_bytes} bytes holds nothing")
    return small


@dataclass(frozen=True, slots=True)
class OutboxPlan:
    """Everything the outbox stream is created with."""

    name: str
    subjects: tuple[str, ...]
    budget_bytes: int  # the profile's store_forward_mb, in bytes
    max_bytes: int  # what the stream may hold (see outbox_capacity)
    max_age_s: float
    max_msg_size: int
    duplicate_window_s: float


def outbox_plan(
    host_id: str,
    subjects: Sequence[str],
    *,
    budget_mb: int,
    max_age_h: float,
    max_payload: int,
) -> OutboxPlan:
    """The outbox for ``host_id``: its telemetry plus ``subjects``, within the budgets."""
    budget = budget_mb * 1024 * 1024
    max_age_s = max_age_h * 3600.0
    captured = tuple(dict.fromkeys([telemetry_filter(host_id), *subjects]))
    return OutboxPlan(
        name=OUTBOX_STREAM,
        subjects=captured,
        budget_bytes=budget,
        max_bytes=outbox_capacity(budget),
        max_age_s=max_age_s,
        max_msg_size=max(1024, max_payload - HEADER_HEADROOM),
        # the server requires the window to be no longer than the stream's max age
        duplicate_window_s=min(PRODUCER_DEDUP_S, max_age_s),
    )
