"""The operator's day two against a running agent (issue 14): one test per rough edge a
user of wash, balena or greengrass-cli hit, each failing before the fix. Real agents
(``lattice-edge run``), real nats-server, real wasm3, the console script as users run it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lattice_testing import CLI, AgentProcess, free_port, run_cli, wait_until

from agent.identity.keys import KeyKind, KeyPair, generate
from agent.identity.wascap import sign_module

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An operator with no config at the default place and their own agent index."""
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "home-config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
        **extra,
    }
    env.pop("LATTICE_EDGE_CONFIG", None)
    return env


def init(tmp_path: Path, name: str = "agent", *, trust: KeyPair | None = None,
         extra: str = "") -> tuple[Path, Path]:  # fmt: skip
    """``lattice-edge init`` a config and data dir on free ports; returns both."""
    config, data = tmp_path / f"{name}.toml", tmp_path / f"{name}-data"
    listen, monitor = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = ["init", "--config", str(config), "--data-dir", str(data),
            "--listen", listen, "--monitor", monitor]  # fmt: skip
    if trust is not None:
        args += ["--trust-issuer", trust.public_key]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    if extra:
        config.write_text(config.read_text() + extra)
    return config, data


def signed_echo(directory: Path, issuer: KeyPair, name: str = "echo.wasm") -> Path:
    signed, _ = sign_module(ECHO.read_bytes(), issuer, "echo")
    path = directory / name
    path.write_bytes(signed)
    return path


def cli_in(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=90, check=False
    )


def test_actor_commands_speak_our_language(
    tmp_path: Path, agent_factory: type[AgentProcess]
) -> None:
    issuer = generate(KeyKind.ACCOUNT)
    config, data = init(tmp_path, trust=issuer)
    env = user_env(tmp_path)
    agent = agent_factory(config, data, env=env).start()
    agent.wait_ready()
    cfg = ("--config", str(config))

    empty = run_cli("actor", "list", *cfg, env=env)
    assert empty.returncode == 0 and empty.stdout.strip() == "no actors running"

    # stopping what does not run fails at once (the host refuses 'sa'), not after 30 s
    unknown = run_cli("actor", "stop", generate(KeyKind.MODULE).public_key, "--timeout", "20",
                      *cfg, env=env)  # fmt: skip
    assert unknown.returncode == 1
    assert "the host refused to stop the actor" in unknown.stderr
    assert "is not running on this host" in unknown.stderr

    # a plain relative path is uploaded and started
    signed_echo(tmp_path, issuer)
    started = cli_in(tmp_path, "actor", "start", "./echo.wasm", "--json", *cfg, env=env)
    assert started.returncode == 0, started.stderr
    actor = json.loads(started.stdout)["public_key"]

    # refusals name what was asked, never the wire opcode
    refused = run_cli("actor", "start", "nats-os://no such bucket/x", *cfg, env=env)
    assert refused.returncode == 1
    assert "the host refused to start the actor" in refused.stderr
    assert "la refused" not in refused.stderr and " la " not in refused.stderr

    # a module of an untrusted issuer: the error names the command that trusts it
    stranger = generate(KeyKind.ACCOUNT)
    signed_echo(tmp_path, stranger, "stranger.wasm")
    untrusted = cli_in(tmp_path, "actor", "start", "stranger.wasm", *cfg, env=env)
    assert untrusted.returncode == 1
    assert f"lattice-edge trust add {stranger.public_key}" in untrusted.stderr
    assert "cannot start stranger.wasm" in untrusted.stderr  # the file named, not the upload

    packed = run_cli("actor", "invoke", actor, "Echo", '{"n": [1, 2]}', "--msgpack", *cfg, env=env)
    assert packed.returncode == 0, packed.stderr
    assert json.loads(packed.stdout) == {"n": [1, 2]}
    raw = run_cli("actor", "invoke", actor, "Echo", "AAH/", "--base64", "--json", *cfg, env=env)
    assert json.loads(raw.stdout)["response_base64"] == "AAH/"

    stopped = run_cli("actor", "stop", actor, "--json", *cfg, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["stopped_instances"] == 1
    assert run_cli("actor", "list", *cfg, env=env).stdout.strip() == "no actors running"
    assert agent.terminate() == 0


def test_an_unreachable_agent_is_one_line_with_the_hint(tmp_path: Path) -> None:
    config, _ = init(tmp_path)
    result = run_cli("actor", "list", "--config", str(config), env=user_env(tmp_path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "cannot reach the agent at nats://127.0.0.1:" in line
    assert "connection refused" in line and "no servers available" not in line
    assert f"is 'lattice-edge run' running with config {config}?" in line
    status = run_cli("status", "--config", str(config), env=user_env(tmp_path))
    assert status.returncode == 3
    assert f"hint     : start it with 'lattice-edge run --config {config}'" in status.stdout


def test_commands_find_the_config_of_the_agent_this_user_runs(
    tmp_path: Path, agent_factory: type[AgentProcess]
) -> None:
    config, data = init(tmp_path)
    env = user_env(tmp_path)
    agent = agent_factory(config, data, env=env).start()
    state = agent.wait_ready()
    # no --config, no $LATTICE_EDGE_CONFIG, nothing at the default path
    status = run_cli("status", "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["agent"]["up"] is True and report["agent"]["host_id"] == state["host_id"]
    assert report["config"] == {
        "path": str(config), "origin": f"the running agent, pid {state['pid']}"
    }  # fmt: skip
    assert run_cli("actor", "list", env=env).stdout.strip() == "no actors running"

    other_config, other_data = init(tmp_path, "other")
    other = agent_factory(other_config, other_data, env=env).start()
    other.wait_ready()
    ambiguous = run_cli("status", env=env)
    assert ambiguous.returncode == 1
    assert "2 agents are running for this user" in ambiguous.stderr
    assert str(config) in ambiguous.stderr and str(other_config) in ambiguous.stderr
    assert other.terminate() == 0
    assert run_cli("status", env=env).returncode == 0  # one again: found
    assert agent.terminate() == 0
    assert not list((tmp_path / "runtime" / "lattice-edge" / "agents").iterdir())


def test_trust_and_labels_apply_on_reload_and_sighup_does_not_kill(
    tmp_path: Path, agent_factory: type[AgentProcess]
) -> None:
    config, data = init(tmp_path)  # trusts nobody, as a fresh init does
    env = user_env(tmp_path)
    agent = agent_factory(config, data, env=env).start()
    agent.wait_ready()
    assert agent.process is not None
    cfg = ("--config", str(config))
    issuer = generate(KeyKind.ACCOUNT)
    module = signed_echo(tmp_path, issuer)
    assert run_cli("actor", "start", str(module), *cfg, env=env).returncode == 1

    # closing the terminal sends SIGHUP: the agent reloads and lives on (it died with 129)
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reloaded: changed nothing" in agent.log(), 20, "the reload")
    assert agent.process.poll() is None

    added = run_cli("trust", "add", issuer.public_key, "--reload", "--json", *cfg, env=env)
    assert added.returncode == 0, added.stderr
    report = json.loads(added.stdout)
    assert report["added"] == [issuer.public_key]
    assert report["reload"]["changed"] == [
        {"key": "trust.trusted_issuers", "old": [], "new": [issuer.public_key]}
    ]
    started = run_cli("actor", "start", str(module), *cfg, env=env)
    assert started.returncode == 0, started.stderr  # no restart needed

    # labels and the log level apply; a changed listener is reported, not applied
    text = config.read_text().replace("[host]\n", "[host]\nlabels = { site = 'north' }\n", 1)
    monitor = free_port()
    text = text.replace("monitor = ", f"monitor = '127.0.0.1:{monitor}'\n# was: ", 1)
    config.write_text(text + "\n[log]\nlevel = 'debug'\n")
    reloaded = run_cli("reload", "--json", *cfg, env=env)
    assert reloaded.returncode == 0, reloaded.stderr
    plan = json.loads(reloaded.stdout)
    assert [c["key"] for c in plan["changed"]] == ["host.labels", "log.level"]
    assert [c["key"] for c in plan["restart_needed"]] == ["leaf.monitor"]
    inventory = json.loads(run_cli("actor", "list", "--json", *cfg, env=env).stdout)
    assert inventory["labels"]["site"] == "north"
    human = run_cli("reload", *cfg, env=env)
    assert "needs restart : leaf.monitor" in human.stdout  # still pending until a restart

    # a config that does not load changes nothing and the agent stays up
    config.write_text(config.read_text() + "\n[trust]\nbogus = 1\n")
    broken = run_cli("reload", *cfg, env=env)
    assert broken.returncode == 1 and "not valid TOML" in broken.stderr
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused, the running config stays" in agent.log(), 20, "refusal")
    assert agent.process.poll() is None
    assert agent.terminate() == 0


def test_logs_shows_the_log_file_and_follows_it(
    tmp_path: Path, agent_factory: type[AgentProcess]
) -> None:
    log = tmp_path / "logs" / "agent.log"
    config, data = init(tmp_path, extra=f"\n[log]\nfile = '{log}'\nfile_max_mb = 1\n")
    env = user_env(tmp_path)
    agent = agent_factory(config, data, env=env).start()
    agent.wait_ready()
    status = json.loads(run_cli("status", "--json", "--config", str(config), env=env).stdout)
    assert status["logs"] == str(log)  # status says where the log is
    shown = run_cli("logs", "-n", "20", "--config", str(config), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "nats-server" in shown.stdout and "ready" in shown.stdout
    follower = subprocess.Popen(
        [CLI, "logs", "-f", "-n", "0", "--config", str(config)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # let it reach the end of the file before the next line
        assert run_cli("reload", "--config", str(config), env=env).returncode == 0
        assert follower.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not any("config reloaded" in line for line in seen):
            assert time.monotonic() < deadline, f"logs -f printed only {seen}"
            ready, _, _ = select.select([follower.stdout], [], [], 1.0)
            if ready:
                seen.append(follower.stdout.readline())
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()
    assert agent.terminate() == 0


FAKE_SERVER = """\
import http.server, json, re, sys, threading, time
if "--version" in sys.argv:
    print("nats-server: v2.15.1"); sys.exit(0)
conf = open(sys.argv[sys.argv.index("-c") + 1]).read()
name = re.search(r'server_name: "([^"]+)"', conf).group(1)
host, port = re.search(r'listen: "([^"]+)"', conf).group(1).rsplit(":", 1)
mhost, mport = re.search(r'http: "([^"]+)"', conf).group(1).rsplit(":", 1)
class Monitor(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        varz = {"server_name": name, "host": host, "port": int(port)}
        body = varz if self.path == "/varz" else {"status": "ok"}
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
    def log_message(self, *args): pass
server = http.server.HTTPServer((mhost, int(mport)), Monitor)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("[1] [INF] Server is ready", file=sys.stderr, flush=True)
time.sleep(1.5)
print(f'[1] [FTL] Error listening on port: {host}:{port}, "bind: address already in use"',
      file=sys.stderr, flush=True)
sys.exit(1)
"""


def test_a_leaf_that_dies_right_after_looking_ready_is_a_failed_start(tmp_path: Path) -> None:
    """Monitoring answers before the client port is bound; a taken port made nats-server
    look ready and exit a moment later, after "ready" had been logged."""
    fake = tmp_path / "nats-server"
    fake.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    fake.chmod(0o755)
    config, _ = init(tmp_path, extra="")
    config.write_text(config.read_text().replace("[leaf]\n", f"[leaf]\nnats_server = '{fake}'\n"))
    result = run_cli("run", "--config", str(config), env=user_env(tmp_path), timeout=60)
    assert result.returncode == 1
    assert "nats-server exited during start-up (code 1)" in result.stderr
    assert "Error listening on port" in result.stderr
    assert "ready (pid" not in result.stderr
