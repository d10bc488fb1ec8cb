"""``lattice-edge actor start|list|invoke|stop`` and ``status`` against a running agent,
through its NATS control interface."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from lattice_testing import AgentProcess, run_cli

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "agent" / "runtime" / "demo" / "echo.wasm"
DEMO_ISSUER = "AB2YB35FXYV3YF6DXP6H35NI4IZH4NMREFWJIEF4DQZIXF3X3MOUCPVJ"


def test_actor_lifecycle_from_the_cli(
    tmp_path: Path, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    config = tmp_path / "agent.toml"
    init = run_cli(
        "init", "--config", str(config), "--data-dir", str(tmp_path / "data"),
        "--listen", f"127.0.0.1:{ports['client']}", "--monitor", f"127.0.0.1:{ports['monitor']}",
        "--trust-issuer", DEMO_ISSUER,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    agent = agent_factory(config, tmp_path / "data").start()
    agent.wait_ready()
    cfg = ("--config", str(config))

    started = run_cli("actor", "start", f"file://{DEMO}", "--count", "2", *cfg)
    assert started.returncode == 0, started.stderr
    actor = started.stdout.strip()
    assert actor.startswith("M")

    listed = json.loads(run_cli("actor", "list", "--json", *cfg).stdout)
    (entry,) = listed["actors"]
    assert entry["id"] == actor and len(entry["instances"]) == 2
    assert actor in run_cli("actor", "list", *cfg).stdout

    greeted = run_cli("actor", "invoke", actor, "Greet", "cli", *cfg)
    assert greeted.returncode == 0 and greeted.stdout == "Hello, cli!"
    failed = run_cli("actor", "invoke", actor, "Nope", *cfg)
    assert failed.returncode == 1 and "unknown operation Nope" in failed.stderr

    status = json.loads(run_cli("status", "--json", *cfg).stdout)
    # The CLI uploaded the file to the device's own object store; the agent read no path.
    digest = hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert status["actors"] == [
        {"id": actor, "name": "Lattice Edge demo echo", "instances": 2,
         "image_ref": f"nats-os://lattice-edge-modules/{digest}"}
    ]  # fmt: skip

    missing = run_cli("actor", "start", f"file://{tmp_path / 'missing.wasm'}", *cfg)
    assert missing.returncode == 1 and "cannot read" in missing.stderr

    stopped = run_cli("actor", "stop", actor, *cfg)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(run_cli("actor", "list", "--json", *cfg).stdout)["actors"] == []
    gone = run_cli("actor", "invoke", actor, "Greet", "x", *cfg)
    assert gone.returncode == 1 and "no host runs actor" in gone.stderr
    assert agent.terminate() == 0


def test_actor_commands_without_an_agent(tmp_path: Path, ports: dict[str, int]) -> None:
    config = tmp_path / "agent.toml"
    run_cli("init", "--config", str(config), "--data-dir", str(tmp_path / "data"),
            "--listen", f"127.0.0.1:{ports['client']}")  # fmt: skip
    result = run_cli("actor", "list", "--config", str(config))
    assert result.returncode == 1
    assert "cannot reach the agent" in result.stderr and "Traceback" not in result.stderr
