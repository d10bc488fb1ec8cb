"""The README's main job: ``lattice-edge run`` with no config anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from lattice_testing import CLI, alive, free_port, wait_until

pytestmark = pytest.mark.integration


def test_embedded_default_runs_the_demo_actor(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "share"),
        # the embedded default keeps its listeners; only the ports move off 4222/8222
        "LATTICE_EDGE_LEAF_LISTEN": f"127.0.0.1:{free_port()}",
        "LATTICE_EDGE_LEAF_MONITOR": f"127.0.0.1:{free_port()}",
        "LATTICE_EDGE_HOST_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("LATTICE_EDGE_CONFIG", None)
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        process = subprocess.Popen([CLI, "run"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "(Ctrl-C stops)" in out.read_text(), 60, "the agent to be ready")
        text = out.read_text()
        assert "embedded default config" in text
        assert "Greet -> 'Hello, lattice-edge!'" in text
        leaf = int((tmp_path / "data" / "run" / "nats-server.pid").read_text())
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert not alive(leaf)
        assert "Traceback" not in out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_demo_tours_the_lattice_and_exits_zero(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "share")}
    result = subprocess.run(
        [CLI, "demo"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ping.hosts answered by 1 host(s)" in out
    assert "started actor Lattice Edge demo echo" in out
    assert "Greet over the lattice -> 'Hello, lattice!'" in out
    assert "all answers correct" in out
    assert "host stopped cleanly" in out
    assert "Traceback" not in result.stderr
