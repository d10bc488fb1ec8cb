"""Bad input gives one clear error line, never a traceback, and loses nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from lattice_testing import AgentProcess, Hub, free_port, run_cli

pytestmark = pytest.mark.integration


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("lattice-edge: error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def init_args(tmp_path: Path, ports: dict[str, int]) -> list[str]:
    return [
        "init", "--config", str(tmp_path / "agent.toml"), "--data-dir", str(tmp_path / "data"),
        "--listen", f"127.0.0.1:{ports['client']}", "--monitor", f"127.0.0.1:{ports['monitor']}",
    ]  # fmt: skip


def test_missing_creds_file(tmp_path: Path, ports: dict[str, int]) -> None:
    missing = tmp_path / "nowhere.creds"
    result = run_cli(*init_args(tmp_path, ports), "--upstream", "nats-leaf://127.0.0.1:7422",
                     "--upstream-creds", str(missing))  # fmt: skip
    assert_one_clear_error(result, str(missing), "does not exist")
    assert not (tmp_path / "agent.toml").exists()


def test_corrupt_creds_file(tmp_path: Path, ports: dict[str, int]) -> None:
    corrupt = tmp_path / "corrupt.creds"
    corrupt.write_text("-----BEGIN NATS USER JWT-----\nnot-a-jwt\n------END NATS USER JWT------\n")
    result = run_cli(*init_args(tmp_path, ports), "--upstream", "nats-leaf://127.0.0.1:7422",
                     "--upstream-creds", str(corrupt))  # fmt: skip
    assert_one_clear_error(result, str(corrupt))
    assert not (tmp_path / "agent.toml").exists()


def test_creds_removed_after_init(tmp_path: Path, hub: Hub, ports: dict[str, int]) -> None:
    assert run_cli(*init_args(tmp_path, ports), "--upstream", hub.leaf_url,
                   "--upstream-creds", str(hub.leaf_creds)).returncode == 0  # fmt: skip
    copied = tmp_path / "data" / "keys" / "upstream.creds"
    copied.write_text("damaged")
    result = run_cli("run", "--config", str(tmp_path / "agent.toml"), timeout=30)
    assert_one_clear_error(result, str(copied), "BEGIN NATS USER JWT")


def test_unreachable_upstream_keeps_the_agent_running(
    tmp_path: Path, hub: Hub, ports: dict[str, int], agent_factory: type[AgentProcess]
) -> None:
    nobody = f"nats-leaf://127.0.0.1:{free_port()}"
    assert run_cli(*init_args(tmp_path, ports), "--upstream", nobody,
                   "--upstream-creds", str(hub.leaf_creds)).returncode == 0  # fmt: skip
    agent = agent_factory(tmp_path / "agent.toml", tmp_path / "data").start()
    agent.wait_ready()
    time.sleep(5)  # nats-server retries about once a second
    log = agent.log()
    assert "Traceback" not in log
    refused = [line for line in log.splitlines() if "connect as leafnode" in line]
    assert 1 <= len(refused) <= 2, refused  # rate-limited, not one line per retry
    report = json.loads(
        run_cli("status", "--config", str(tmp_path / "agent.toml"), "--json").stdout
    )
    assert report["agent"]["up"] and report["leaf"]["up"]
    assert report["upstream"] == {"configured": [nobody], "connected": False}
    assert agent.terminate() == 0


def test_missing_nats_server_binary(tmp_path: Path, ports: dict[str, int]) -> None:
    assert run_cli(*init_args(tmp_path, ports)).returncode == 0
    config = tmp_path / "agent.toml"
    config.write_text(
        config.read_text().replace("[leaf]", "[leaf]\nnats_server = '/opt/none/nats-server'")
    )
    result = run_cli("run", "--config", str(config), timeout=30)
    assert_one_clear_error(result, "nats-server not found", "/opt/none/nats-server")


def test_busy_local_port(tmp_path: Path, ports: dict[str, int]) -> None:
    assert run_cli(*init_args(tmp_path, ports)).returncode == 0
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["client"]))
        squatter.listen()
        result = run_cli("run", "--config", str(tmp_path / "agent.toml"), timeout=60)
    assert_one_clear_error(result, "nats-server exited during start-up", str(ports["client"]))
    assert not (tmp_path / "data" / "run" / "agent.json").exists()


def test_bad_config_value_names_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[leaf]\nlisten = 'everywhere'\n")
    result = run_cli("run", "--config", str(config))
    assert_one_clear_error(result, "leaf.listen", str(config))


def test_init_is_idempotent_and_needs_force_to_change(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    first = run_cli(*init_args(tmp_path, ports))
    again = run_cli(*init_args(tmp_path, ports))
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout  # same host key
    assert "already initialised" in again.stderr
    changed = run_cli(*init_args(tmp_path, ports), "--lattice", "other")
    assert_one_clear_error(changed, "--force")
    forced = run_cli(*init_args(tmp_path, ports), "--lattice", "other", "--force")
    assert forced.returncode == 0 and forced.stdout == first.stdout
    assert 'lattice = "other"' in (tmp_path / "agent.toml").read_text()


def test_bad_cli_arguments_are_usage_errors(tmp_path: Path) -> None:
    result = run_cli("init", "--config", str(tmp_path / "a.toml"), "--listen", "nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "host:port" in result.stderr
    result = run_cli("init", "--config", str(tmp_path / "a.toml"), "--trust-issuer", "NOTAKEY")
    assert result.returncode == 2 and "account key" in result.stderr


def test_status_without_an_agent_says_down(tmp_path: Path, ports: dict[str, int]) -> None:
    assert run_cli(*init_args(tmp_path, ports)).returncode == 0
    result = run_cli("status", "--config", str(tmp_path / "agent.toml"))
    assert result.returncode == 3
    assert "agent    : down" in result.stdout
    assert "Traceback" not in result.stderr
