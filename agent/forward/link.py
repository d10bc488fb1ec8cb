"""Knowing the instant the leaf's uplink comes back, without polling.

nats-server tells the agent itself: the supervisor reads every line the leaf logs, and a
solicited leafnode connection logs ``Leafnode connection created for account: …`` when it
is made and ``Leafnode connection closed: …`` when it goes (the same words on 2.9.10 and
2.15). :class:`UplinkWatch` turns those lines into events the forwarder can wait on, so it
resumes within milliseconds of the link returning and spends nothing while it is down.

Why not something else (measured; see ``docs/store-and-forward.md``): the system
account's ``$SYS.ACCOUNT.*.LEAFNODE.CONNECT`` event is only sent by servers with gateways
and needs a system-account user on the leaf; polling ``/leafz`` (what ``status`` reads)
costs a TCP connection and an HTTP exchange per poll and still lags by its interval; and
interest changes are invisible to clients. The lines are hints, not truth (a local client
can get words of its own into the leaf's log, in a client name): the forwarder still proves
the path with one message before opening its window, confirms a closed link on ``/leafz``
before acting on it, tries at most every 50 ms however many hints come, and falls back to a
slow retry timer in case a future nats-server words its log differently.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

__all__ = ["UplinkWatch"]

# "[INF] 127.0.0.1:7422 - lid:5 - Leafnode connection created for account: $G" (2.9 to 2.15)
_LINE = re.compile(r"\[INF\] \S+ - lid:\d+ - Leafnode connection (created for account|closed)")


class UplinkWatch:
    """The uplink's state as the leaf reports it; fed one log line at a time."""

    def __init__(self) -> None:
        self.connected: bool | None = None  # None until the leaf has said anything
        self.changed_at: float | None = None  # time.time() of the last change
        self.ups = 0
        self.downs = 0
        self.listeners: list[Callable[[bool], None]] = []  # called with each new state
        self._up = asyncio.Event()
        self._down = asyncio.Event()

    def feed(self, line: str) -> None:
        """One line of nats-server's output (called by the leaf supervisor's pump)."""
        match = _LINE.search(line)
        if match is None:
            return
        if match.group(1) == "closed":
            self.connected = False
            self.downs += 1
            self._signal(self._down)
        else:
            self.connected = True
            self.ups += 1
            self._signal(self._up)

    def _signal(self, event: asyncio.Event) -> None:
        self.changed_at = time.time()
        event.set()
        for listener in list(self.listeners):
            listener(bool(self.connected))

    def next_up(self) -> asyncio.Event:
        """An event the next ``created`` line sets.

        Take it *before* trying the link, then wait on it after a failure: a link that came
        back while the attempt was failing has set it already, so nothing is missed.
        """
        if self._up.is_set():
            self._up = asyncio.Event()
        return self._up

    def next_down(self) -> asyncio.Event:
        """An event the next ``closed`` line sets (taken the same way as :meth:`next_up`)."""
        if self._down.is_set():
            self._down = asyncio.Event()
        return self._down
