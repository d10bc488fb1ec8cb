"""One agent per data directory; modes of what the agent creates."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.datadir import DataDirLock
from agent.errors import AgentRunningError
from agent.fsutil import ensure_dir, write_atomic, write_secret


def test_a_second_lock_names_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from agent.datadir import DataDirLock;"
         f"DataDirLock(Path({str(tmp_path)!r})).acquire(); print('locked', flush=True);"
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(AgentRunningError, match=f"pid {holder.pid}") as caught:
            DataDirLock(tmp_path).acquire()
        assert caught.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    lock = DataDirLock(tmp_path)  # the kernel dropped the dead holder's lock
    lock.acquire()
    assert lock.held
    lock.release()


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ensure_dir(tmp_path / "data" / "run")
        write_atomic(tmp_path / "data" / "state.json", b"{}")
        write_secret(tmp_path / "data" / "keys" / "host.nk", b"SN...")
    finally:
        os.umask(old)

    def mode(path: str) -> int:
        return stat.S_IMODE((tmp_path / path).stat().st_mode)

    assert mode("data") == 0o750 and mode("data/run") == 0o750
    assert mode("data/state.json") == 0o640
    assert mode("data/keys") == 0o700 and mode("data/keys/host.nk") == 0o600
