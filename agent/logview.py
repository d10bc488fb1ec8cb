"""``lattice-edge logs``: where the agent's log is, and reading it.

Under systemd the agent's stderr goes to the journal (the run file records the unit, see
:func:`agent.running.service_unit`), so the journal is read with ``journalctl -u UNIT``.
Otherwise the log is the ``[log] file`` (rotated by the agent: ``agent.log``,
``agent.log.1``, …), which is tailed here and followed across rotations. An agent that
logs only to the stderr of the terminal that started it has no log to read, and the
error says how to get one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from agent.config import Config
from agent.errors import AgentStateError

__all__ = ["LogSource", "follow_file", "journal_command", "log_source", "tail_file"]

DEFAULT_UNIT = "lattice-edge.service"
_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class LogSource:
    """The journal of ``unit``, or the log file at ``path``."""

    unit: str | None = None
    path: Path | None = None

    def describe(self) -> str:
        """``the journal of lattice-edge.service`` or ``/var/log/…``."""
        return f"the journal of {self.unit}" if self.unit else str(self.path)


def log_source(
    config: Config,
    run_info: Mapping[str, Any] | None,
    *,
    journal_has: Callable[[str], bool] | None = None,
) -> LogSource:
    """Where the agent of ``config`` logs (``run_info``: its run file, when it runs).

    A running agent's run file says whether systemd runs it. For a stopped agent the
    config's ``[log] file`` is read if there is one, else the journal of
    ``lattice-edge.service`` if it has entries (``journal_has``).
    """
    if run_info is not None:
        unit = run_info.get("systemd_unit")
        if isinstance(unit, str) and unit:
            return LogSource(unit=unit)
        log_file = run_info.get("log_file")
        if isinstance(log_file, str) and log_file:
            return LogSource(path=Path(log_file))
    elif config.log_file is not None:
        return LogSource(path=config.log_file.path)
    elif (journal_has or _journal_has)(DEFAULT_UNIT):
        return LogSource(unit=DEFAULT_UNIT)
    where = str(config.source) if config.source else "a config file"
    raise AgentStateError(
        "the agent logs only to the stderr of the terminal that runs it; set [log] file in "
        f"{where} (then 'lattice-edge reload' is not enough: restart it), or run it under "
        "systemd"
    )


def journal_command(unit: str, *, lines: int, follow: bool) -> list[str]:
    """The ``journalctl`` command line that shows the unit's log."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise AgentStateError(f"the agent logs to the journal of {unit}, but journalctl is missing")
    command = [journalctl, "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"]
    return [*command, "-f"] if follow else command


def _journal_has(unit: str) -> bool:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return False
    import subprocess

    try:
        result = subprocess.run(
            [journalctl, "-u", unit, "-n", "1", "-q", "--no-pager"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def tail_file(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, read from the end (a log may be large)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            data = b""
            while position > 0 and data.count(b"\n") <= lines:
                step = min(_BLOCK, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except OSError as exc:
        raise AgentStateError(f"cannot read the log {path}: {exc.strerror or exc}") from exc
    kept: deque[str] = deque(maxlen=lines)
    for raw in data.splitlines():
        kept.append(raw.decode("utf-8", "replace"))
    return list(kept) if lines > 0 else []


def follow_file(
    path: Path, *, interval: float = 0.5, stop: Callable[[], bool] = lambda: False
) -> Iterator[str]:
    """Lines appended to ``path`` from this call on, across rotations, until ``stop()``.

    The file is opened (at its end) now, not at the first ``next()``, so nothing written
    in between is missed. A rotation (the file replaced: another inode, or shorter than
    what was read) is followed by reading the new file from its start.
    """
    try:
        handle: BinaryIO | None = path.open("rb")
    except FileNotFoundError:
        handle = None
    except OSError as exc:
        raise AgentStateError(f"cannot read the log {path}: {exc.strerror or exc}") from exc
    if handle is not None:
        handle.seek(0, os.SEEK_END)
    return _follow(path, handle, interval, stop)


def _follow(
    path: Path, handle: BinaryIO | None, interval: float, stop: Callable[[], bool]
) -> Iterator[str]:
    inode = os.fstat(handle.fileno()).st_ino if handle is not None else None
    partial = b""
    try:
        while not stop():
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    time.sleep(interval)
                    continue
                except OSError as exc:
                    raise AgentStateError(f"cannot read the log {path}: {exc}") from exc
                inode = os.fstat(handle.fileno()).st_ino
            chunk = handle.read(_BLOCK)
            if chunk:
                *complete, partial = (partial + chunk).split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace")
                continue
            try:
                current = path.stat()
            except FileNotFoundError:
                current = None
            if current is None or current.st_ino != inode or current.st_size < handle.tell():
                handle.close()
                handle = None
                partial = b""
                if current is not None:
                    continue  # the new file: read it from the start
            time.sleep(interval)
    finally:
        if handle is not None:
            handle.close()
