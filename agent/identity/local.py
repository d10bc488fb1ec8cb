"""The agent user: the nkey with which the agent and the CLI log in to the local leaf.

Its seed lives in ``<data_dir>/local/agent-user.nk``. When the agent runs as the service
group ``lattice-edge``, or the data directory belongs to that group (the packaged unit,
and root's ``init`` there), the file is 0640 in a 0750 directory, so the operators in that
group can use the CLI; otherwise it is 0600, for the owner alone.
Anyone who can read it controls the host, which is why the anonymous local user is
restricted (:mod:`agent.leaf.access`).
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from agent.errors import CredsError, KeyFileError
from agent.fsutil import DIR_MODE, ensure_dir, write_atomic
from agent.identity.keys import KeyKind, KeyPair, generate, load_seed_file

__all__ = [
    "SERVICE_GROUP",
    "agent_user_path",
    "ensure_agent_user",
    "load_agent_user",
    "read_password_file",
]

SERVICE_GROUP = "lattice-edge"
_SEED = Path("local") / "agent-user.nk"


def agent_user_path(data_dir: Path) -> Path:
    """Where the agent user's seed is kept."""
    return data_dir / _SEED


def _seed_mode(data_dir: Path) -> int:
    try:
        service_gid = grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return 0o600
    try:
        data_gid = os.stat(data_dir).st_gid
    except OSError:
        data_gid = None
    return 0o640 if service_gid in (os.getegid(), data_gid) else 0o600


def ensure_agent_user(data_dir: Path) -> KeyPair:
    """Load the agent user, creating it on first use."""
    path = agent_user_path(data_dir)
    if path.exists():
        return load_agent_user(data_dir)
    key = generate(KeyKind.USER)
    ensure_dir(path.parent, DIR_MODE)
    write_atomic(path, (key.seed + "\n").encode(), mode=_seed_mode(data_dir))
    return key


def load_agent_user(data_dir: Path) -> KeyPair:
    """Load the agent user; the error says how to get access when it is not readable."""
    path = agent_user_path(data_dir)
    try:
        return load_seed_file(path, KeyKind.USER)
    except KeyFileError as exc:
        if isinstance(exc.__cause__, PermissionError):
            raise KeyFileError(
                f"cannot read {path}: permission denied (run as the agent's user, or join "
                f"the '{SERVICE_GROUP}' group: sudo adduser $USER {SERVICE_GROUP})"
            ) from exc
        raise


MAX_PASSWORD_BYTES = 1024


def read_password_file(path: Path) -> str:
    """A local user's password (or token) file: one line, mode 0600, at most 1 KiB."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise CredsError(f"cannot read password file {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CredsError(f"password file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise CredsError(
                f"password file {path} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
            )
        data = handle.read(MAX_PASSWORD_BYTES + 1)
    text = data.decode("utf-8", "replace").strip()
    if len(data) > MAX_PASSWORD_BYTES or not text or any(ord(c) < 0x20 for c in text):
        raise CredsError(f"password file {path} must hold one line of at most 1 KiB")
    return text
