"""The data directory's lock: one agent per data directory, taken before anything is touched.

A second ``lattice-edge run`` on the same config would otherwise stop the first one's
nats-server as an "orphan", fight over its ports and delete its run file on exit. The lock
is an ``flock`` on ``<data_dir>/agent.lock`` holding the owner's pid: the kernel drops it
when the process dies (``kill -9`` included), so a stale file never blocks a restart, and
it is not inherited by nats-server or the sandbox workers (the descriptor is close-on-exec).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from agent.errors import AgentRunningError, StateError
from agent.fsutil import ensure_dir

__all__ = ["LOCK_FILE", "DataDirLock"]

LOCK_FILE = "agent.lock"


class DataDirLock:
    """An exclusive, process-lifetime lock on a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise AgentRunningError naming the agent that has it."""
        if self._fd is not None:
            return
        try:
            ensure_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            raise StateError(f"cannot open the lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "another process"
            raise AgentRunningError(
                f"another lattice-edge agent ({who}) is already running on {self.path.parent}",
                pid=pid,
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays; its pid no longer matters)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
