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

import logging
import re
import time

__all__ = ["MAX_STDERR_LINE", "STDERR_BURST", "STDERR_LINES_PER_S", "StderrLog"]

STDERR_LINES_PER_S = 20.0
STDERR_BURST = 50
MAX_STDERR_LINE = 2000
BACKTRACE_FRAMES = 8  # frames kept in the folded record; a recursion trap prints ~40k

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
        self._continued = False  # its first part was logged; count the rest

    def feed(self, data: bytes) -> None:
        """Log the complete lines ``data`` finishes (and an overlong partial one)."""
        *lines, partial = (self._partial + data).split(b"\n")
        if len(partial) > MAX_STDERR_LINE:
            lines.append(partial)
            partial = b""
        self._partial = partial
        self._emit(lines)
        # Log the backtrace now, not when the next line comes (which may be never); frames
        # that follow in the next chunks (a deep recursion) are only counted.
        self._end_backtrace(continues=True)

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
                if len(self._frames) < BACKTRACE_FRAMES and not self._continued:
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

    def _end_backtrace(self, *, continues: bool = False) -> None:
        frames = self._frames
        if frames is None:
            return
        more, self._more_frames = self._more_frames, 0
        if self._continued:
            if more:
                self._log.debug("worker %s trap backtrace: +%d more frames", self._name, more)
        else:
            extra = f" (+{more} more frames)" if more else ""
            self._log.debug("worker %s trap backtrace: %s%s", self._name, "; ".join(frames), extra)
        self._frames, self._continued = ([], True) if continues else (None, False)

    def _report_dropped(self) -> None:
        if self._dropped:
            self._log.warning("worker %s stderr: [%d lines suppressed]", self._name, self._dropped)
            self._dropped = 0


def _text(raw: bytes) -> str:
    return raw[:MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
