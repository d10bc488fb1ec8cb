"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A power cut on an SD card must leave either the old file or the new one, never half of
each; secrets are created with mode 0600 from the first byte, not chmod-ed afterwards.
Every file and directory gets an explicit mode, whatever the umask: data and run
directories 0750, files 0640 (readable by the ``lattice-edge`` group, so operators in it
can use the CLI), key directories 0700 and seeds 0600.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "SECRET_DIR_MODE",
    "SECRET_MODE",
    "ensure_dir",
    "rewrite_atomic",
    "write_atomic",
    "write_secret",
]

DIR_MODE = 0o750
FILE_MODE = 0o640
SECRET_DIR_MODE = 0o700
SECRET_MODE = 0o600


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create ``path`` with exactly ``mode`` (missing parents 0750); return it.

    Only directories this call creates get a mode: an existing directory is the
    operator's and keeps its own (a packaged data dir may be group-owned on purpose).
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        wanted = mode if directory == path else DIR_MODE
        try:
            directory.mkdir(mode=wanted)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs to set
        os.chmod(directory, wanted)  # mkdir's mode is filtered by the umask
    return path


def write_atomic(
    path: Path, data: bytes, *, mode: int = FILE_MODE, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically, creating parent directories (0750).

    ``owner`` (uid, gid) is given to the new file before it replaces the old one, so an
    edit by root keeps a file readable by the service user and group it belonged to.
    """
    ensure_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
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


def rewrite_atomic(path: Path, data: bytes) -> None:
    """Like :func:`write_atomic`, but an existing file keeps its mode and (as root) its
    owner: a config edited by ``sudo lattice-edge …`` stays readable by the service."""
    try:
        info = path.stat()
    except FileNotFoundError:
        write_atomic(path, data)
        return
    owner = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
    write_atomic(path, data, mode=stat.S_IMODE(info.st_mode), owner=owner)


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret (seed, creds) atomically with mode 0600 in a 0700 directory."""
    ensure_dir(path.parent, SECRET_DIR_MODE)
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
