"""The data directory's lock: one agent per data directory, taken before anything is touched.

A second ``lattice-edge run`` on the same config would otherwise stop the first one's
nats-server as an "orphan", fight over its ports and delete its run file on exit. The lock
is an ``flock`` on ``<data_dir>/agent.lock`` holding the owner's pid: the kernel drops it
when the process dies (``kill -9`` included), so a stale file never blocks a restart, and
it is not inherited by nats-server or the sandbox workers (the descriptor is close-on-exec).

It also holds :func:`hand_over`, which gives what root wrote in a service user's data
directory (``sudo lattice-edge init`` or ``enroll`` on a packaged device) to that user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from agent.errors import AgentRunningError, StateError
from agent.fsutil import ensure_dir

__all__ = ["LOCK_FILE", "DataDirLock", "hand_over"]

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


def hand_over(data_dir: Path, *paths: Path) -> None:
    """As root, give the root-owned ``paths`` (a directory with all it holds) to the owner
    of ``data_dir``: the files ``init`` or ``enroll`` just wrote, not the whole tree (which
    holds the leaf's JetStream store).

    Does nothing unless running as root on a data directory someone else owns. The
    service user owns that tree and may be hostile to root, so each path is opened with
    ``O_NOFOLLOW`` from its parent and the walk changes entries relative to directory
    descriptors: a directory swapped for a symlink fails to open instead of leading
    root's ``chown`` to a file outside the tree.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(data_dir, follow_symlinks=False)
    except FileNotFoundError:
        return
    if owner.st_uid == 0 or not stat.S_ISDIR(owner.st_mode):
        return
    for path in paths:
        try:
            parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # nothing there: nothing to hand over
        try:
            _hand_over_entry(parent, path.name, owner.st_uid, owner.st_gid)
        finally:
            os.close(parent)


def _hand_over_entry(parent: int, name: str, uid: int, gid: int) -> None:
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
        except OSError:
            return  # replaced meanwhile: not followed
        try:
            _hand_over_dir(fd, uid, gid)
        finally:
            os.close(fd)
    elif info.st_uid == 0 and info.st_nlink == 1:
        # A second hard link could be one to a file of root's elsewhere (where the
        # kernel's protected_hardlinks is off); nothing init writes has one.
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)


def _hand_over_dir(fd: int, uid: int, gid: int) -> None:
    if os.fstat(fd).st_uid == 0:
        os.fchown(fd, uid, gid)
    for name in os.listdir(fd):
        _hand_over_entry(fd, name, uid, gid)
