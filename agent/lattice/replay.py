"""Refusing replayed invocations. Pure (the clock is a parameter).

A signed invocation can be captured and sent again; its signature stays valid. So the
host remembers which invocations it has run — by JWT id (``jti``), or issuer and
invocation id when a sender sets none — for as long as it would accept them, and refuses
a second one. "As long as it would accept them" is bounded by the issue time: an
invocation issued more than :data:`WINDOW_S` ago (or that far in the future: clock skew)
is refused outright, so the memory needed is one window's worth of calls.

Memory is bounded too (:data:`MAX_ENTRIES`). When the cache is full the oldest entries
are forgotten and the acceptance window shrinks to what is still remembered: an
invocation issued no later than a forgotten one is refused as too old. Under extreme load
this refuses stale calls rather than ever running a replay.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from agent.errors import AntiForgeryError

__all__ = ["MAX_ENTRIES", "WINDOW_S", "ReplayGuard"]

WINDOW_S = 60.0
MAX_ENTRIES = 16_384


class ReplayGuard:
    """Admits each invocation once within the window."""

    def __init__(
        self,
        *,
        window: float = WINDOW_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._floor = float("-inf")  # issue time of the newest entry forgotten early

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: str, issued_at: float | None) -> None:
        """Remember ``key``; AntiForgeryError (check ``replay``) if it cannot be admitted."""
        now = self.clock()
        moment = now if issued_at is None else issued_at
        if moment < now - self.window or moment > now + self.window:
            raise AntiForgeryError(
                "invocation rejected: issued outside the accepted "
                f"{self.window:g} s clock-skew window",
                check="replay",
            )
        self._expire(now)
        if key in self._seen:
            raise AntiForgeryError(
                "invocation rejected: this invocation was already received (replay)",
                check="replay",
            )
        if moment <= self._floor:
            raise AntiForgeryError(
                "invocation rejected: too old to be checked for replay under this load",
                check="replay",
            )
        if len(self._seen) >= self.max_entries:
            _, forgotten = self._seen.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        self._seen[key] = max(moment, now)  # kept until the window passes, by our clock

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[key]
