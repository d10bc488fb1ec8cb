"""A sandbox worker's stderr (wasm3 trap backtraces) into ``logging``, rate-limited.

Fed from the pipe callback as fast as the worker writes: a recursion trap prints ~40k lines,
and a worker blocked on a full stderr pipe would look hung. A token bucket lets
:data:`STDERR_BURST` lines through at once and :data:`STDERR_LINES_PER_S` after that; the
rest are counted and reported as suppressed.

wasm3's trap backtraces (``==== wasm backtrace:`` and one line per frame) are folded into
one DEBUG record: the trap itself reaches the caller as the error (``[trap] unreachable
executed``), so at the default level a trap is that one line, and ``--debug`` (or
``[log] level = "debug"``) shows where it happened.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

__all__ = ["MAX_STDERR_LINE", "STDERR_BURST", "STDERR_LINES_PER_S", "StderrLog"]

STDERR_LINES_PER_S = 20.0
STDERR_BURST = 50
MAX_STDERR_LINE = 2000
BACKTRACE_FRAMES = 8  # frames kept in the folded record; a recursion trap prints ~40k
BACKTRACE_QUIET_S = 0.1  # a backtrace is complete once the pipe is quiet this long

_BACKTRACE_START = b"==== wasm backtrace:"
_FRAME = re.compile(rb"^\s*\d+: ")


class StderrLog:
    """Split one worker's stderr into lines and log them as warnings, with a rate limit."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self._name = name
        self._log = logger
        self._tokens = float(STDERR_BURST)
        self._last = time.monotonic()
        self._dropped = 0
        self._partial = b""
        self._frames: list[str] | None = None  # the backtrace being folded, if any
        self._more_frames = 0
        self._flush: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        """Log the complete lines ``data`` finishes (and an overlong partial one)."""
        *lines, partial = (self._partial + data).split(b"\n")
        if len(partial) > MAX_STDERR_LINE:
            lines.append(partial)
            partial = b""
        self._partial = partial
        self._emit(lines)
        if self._frames is not None:
            # The rest of a backtrace may come in the next chunks; log it once the pipe
            # has been quiet for a moment, not when the next line comes (maybe never).
            if self._flush is not None:
                self._flush.cancel()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._end_backtrace()
            else:
                self._flush = loop.call_later(BACKTRACE_QUIET_S, self._end_backtrace)

    def close(self) -> None:
        """The pipe closed: log what is left and the final suppressed count."""
        lines = [self._partial] if self._partial else []
        self._partial = b""
        self._emit(lines)
        self._end_backtrace()
        self._report_dropped()

    def _emit(self, lines: list[bytes]) -> None:
        now = time.monotonic()
        self._tokens = min(
            float(STDERR_BURST), self._tokens + (now - self._last) * STDERR_LINES_PER_S
        )
        self._last = now
        for raw in lines:
            if raw.strip().startswith(_BACKTRACE_START):
                self._end_backtrace()
                self._frames = []
                continue
            if self._frames is not None and _FRAME.match(raw):
                if len(self._frames) < BACKTRACE_FRAMES:
                    self._frames.append(" ".join(_text(raw).split()))
                else:
                    self._more_frames += 1
                continue
            self._end_backtrace()
            if self._tokens < 1.0:
                self._dropped += 1
                continue
            self._tokens -= 1.0
            self._report_dropped()
            text = _text(raw)
            if text:
                self._log.warning("worker %s stderr: %s", self._name, text)

    def _end_backtrace(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        frames, self._frames = self._frames, None
        if frames is None:
            return
        more, self._more_frames = self._more_frames, 0
        extra = f" (+{more} more frames)" if more else ""
        self._log.debug("worker %s trap backtrace: %s%s", self._name, "; ".join(frames), extra)

    def _report_dropped(self) -> None:
        if self._dropped:
            self._log.warning("worker %s stderr: [%d lines suppressed]", self._name, self._dropped)
            self._dropped = 0


def _text(raw: bytes) -> str:
    return raw[:MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
