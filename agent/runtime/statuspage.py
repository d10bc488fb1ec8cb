"""The status page a sandbox worker shares with the agent: a small file both processes map.

It makes worker kills exact while letting the worker batch its pipe writes. Two parts:

* **The stack** of requests the worker has started and not finished, bottom first. Normally
  one deep; deeper while a guest waits for a host reply and the worker runs another actor's
  request meanwhile (a nested invocation). Each entry holds the request id, whether it is
  running or waiting for a host reply, when its current running span began
  (``time.monotonic()``, the same clock as the agent's event loop) and the guest time it used
  before. The agent's watchdog reads the top entry to enforce deadlines; after the worker
  died it reads the whole stack to learn exactly which requests had started.
* **The spill area**: every frame the worker sends is first appended here, and only later
  written to the pipe in one batch. If the worker is killed in between, the agent reads the
  frames from here, so a finished request never loses its answer. A frame may then arrive
  twice (written, then the worker died before it could mark the area empty): the agent
  applies a Result or Failure only to a request still in flight, so that is harmless.

The worker writes; the agent reads the stack racily while the worker runs (the watchdog
acts only on two identical readings a tick apart, so a torn read never kills) and reads
everything else only after the process is gone. Fields are native-endian int64/float64
arrays, accessed through ``memoryview.cast`` (an item store is a plain memory write: this is
on the path of every invocation).
"""

from __future__ import annotations

import mmap
import os
from typing import NamedTuple

__all__ = [
    "DEPTH",
    "HOST_WAIT",
    "IDS",
    "MAX_DEPTH",
    "RUNNING",
    "SENDING",
    "SINCE",
    "SPENT",
    "SPILL_BYTES",
    "STATES",
    "USED",
    "StackTop",
    "StatusPage",
]

MAX_DEPTH = 32  # stack entries; the worker never nests deeper than this
SPILL_BYTES = 256 * 1024  # frames larger than this bypass the spill area (see worker)
RUNNING = 1  # the guest runs: its time counts against the request's budget
HOST_WAIT = 2  # the guest waits for a host reply (or for a nested request above it)
SENDING = 3  # finished; its one oversized answer is being written straight to the pipe

# int64 slots (indices into StatusPage.ints; the worker writes them directly)
USED = 0  # bytes of complete frames in the spill area
DEPTH = 1
IDS = 8
STATES = IDS + MAX_DEPTH
_INT_COUNT = STATES + MAX_DEPTH
# float64 slots (indices into StatusPage.floats), stored after the ints
SINCE = 0
SPENT = MAX_DEPTH
_FLOAT_COUNT = 2 * MAX_DEPTH
_INT_BYTES = 8 * _INT_COUNT
_SPILL_OFFSET = 4096
PAGE_BYTES = _SPILL_OFFSET + SPILL_BYTES
assert _INT_BYTES + 8 * _FLOAT_COUNT <= _SPILL_OFFSET


class StackTop(NamedTuple):
    """The top stack entry as the watchdog sees it."""

    req_id: int
    state: int
    since: float
    spent: float


class StatusPage:
    """One mapping of a status page (see the module docstring).

    The agent makes the page with :meth:`create` and passes the fd to the worker, which maps
    it with ``StatusPage(fd)``. ``StatusPage(None)`` is a private page, for a worker run by
    hand.
    """

    def __init__(self, fd: int | None) -> None:
        self._mm = mmap.mmap(-1 if fd is None else fd, PAGE_BYTES)
        view = memoryview(self._mm)
        self._view = view
        self.ints = view[:_INT_BYTES].cast("q")
        self.floats = view[_INT_BYTES : _INT_BYTES + 8 * _FLOAT_COUNT].cast("d")
        self.spill = view[_SPILL_OFFSET:]

    @classmethod
    def create(cls) -> tuple[StatusPage, int]:
        """A new zeroed page and the fd to hand to the worker (the caller closes it)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("lattice-edge-worker", os.MFD_CLOEXEC)
        else:  # not Linux: an unlinked temporary file does the same
            import tempfile  # here: the worker imports this module, and start-up matters

            handle, path = tempfile.mkstemp(prefix="lattice-edge-worker-")
            os.unlink(path)
            fd = handle
        try:
            os.ftruncate(fd, PAGE_BYTES)
            return cls(fd), fd
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Unmap the page (every view into it is released first)."""
        for view in (self.ints, self.floats, self.spill, self._view):
            view.release()
        self._mm.close()

    # --- the agent's side -------------------------------------------------------------

    def top(self) -> StackTop | None:
        """The request on top of the stack, or None when the worker runs nothing."""
        depth = self.ints[DEPTH]
        if not 0 < depth <= MAX_DEPTH:
            return None
        i = depth - 1
        return StackTop(
            self.ints[IDS + i], self.ints[STATES + i], self.floats[SINCE + i],
            self.floats[SPENT + i],
        )  # fmt: skip

    def stack(self) -> list[int]:
        """Ids of the started, unfinished requests, bottom first (read after the worker died)."""
        depth = min(max(self.ints[DEPTH], 0), MAX_DEPTH)
        return [self.ints[IDS + i] for i in range(depth)]

    def spilled(self) -> bytes:
        """The frames in the spill area (read after the worker died)."""
        used = min(max(self.ints[USED], 0), SPILL_BYTES)
        return self.spill[:used].tobytes()
