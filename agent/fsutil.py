"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A power cut on an SD card must leave either the old file or the new one, never half of
each; secrets are created with mode 0600 from the first byte, not chmod-ed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["SECRET_MODE", "write_atomic", "write_secret"]

SECRET_MODE = 0o600


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret (seed, creds) atomically with mode 0600 in a 0700 directory."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    write_atomic(path, data, mode=SECRET_MODE)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems (tmpfs on old kernels) refuse directory fsync; rename stands
    finally:
        os.close(dir_fd)
