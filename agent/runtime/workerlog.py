"""A sandbox worker's stderr (wasm3 trap backtraces) into ``logging``, rate-limited.

Fed from the pipe callback as fast as the worker writes: a recursion trap prints ~40k lines,
and a worker blocked on a full stderr pipe would look hung. A token bucket lets
:data:`STDERR_BURST` lines through at once and :data:`STDERR_LINES_PER_S` after that; the
rest are counted and reported as suppressed.
"""

from __future__ import annotations

import logging
import time

__all__ = ["MAX_STDERR_LINE", "STDERR_BURST", "STDERR_LINES_PER_S", "StderrLog"]

STDERR_LINES_PER_S = 20.0
STDERR_BURST = 50
MAX_STDERR_LINE = 2000


class StderrLog:
    """Split one worker's stderr into lines and log them as warnings, with a rate limit."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self._name = name
        self._log = logger
        self._tokens = float(STDERR_BURST)
        self._last = time.monotonic()
        self._dropped = 0
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Log the complete lines ``data`` finishes (and an overlong partial one)."""
        *lines, partial = (self._partial + data).split(b"\n")
        if len(partial) > MAX_STDERR_LINE:
            lines.append(partial)
            partial = b""
        self._partial = partial
        self._emit(lines)

    def close(self) -> None:
        """The pipe closed: log what is left and the final suppressed count."""
        lines = [self._partial] if self._partial else []
        self._partial = b""
        self._emit(lines)
        self._report_dropped()

    def _emit(self, lines: list[bytes]) -> None:
        now = time.monotonic()
        self._tokens = min(
            float(STDERR_BURST), self._tokens + (now - self._last) * STDERR_LINES_PER_S
        )
        self._last = now
        for raw in lines:
            if self._tokens < 1.0:
                self._dropped += 1
                continue
            self._tokens -= 1.0
            self._report_dropped()
            text = raw[:MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
            if text:
                self._log.warning("worker %s stderr: %s", self._name, text)

    def _report_dropped(self) -> None:
        if self._dropped:
            self._log.warning("worker %s stderr: [%d lines suppressed]", self._name, self._dropped)
            self._dropped = 0
