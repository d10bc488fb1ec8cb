"""Test helpers with real parts: an operator-mode hub (the NGS stand-in) and real
``lattice-edge`` agent processes. Imported by conftest.py and by the benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.identity import jwt
from agent.identity.keys import KeyKind, generate

CLI = str(Path(sys.executable).parent / "lattice-edge")


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http_json(port: int, path: str) -> Any:
    """GET a monitoring endpoint; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


def agent_seed(data_dir: Path) -> str:
    """The seed of a device's agent user: what its CLI (and a test) logs in to its leaf with.

    Anonymous local clients may use application subjects only; control and RPC need it.
    """
    from agent.identity.local import load_agent_user

    return load_agent_user(data_dir).seed


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lattice-edge`` console script."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


class Hub:
    """A nats-server in operator mode with SYS and APP accounts and a memory resolver.

    It issues user credentials in APP: one for the device's leaf link, one for a
    cloud-side client. Ports stay the same across :meth:`stop` and :meth:`start`.
    """

    def __init__(
        self, directory: Path, binary: Path, *, leaf_tls: tuple[Path, Path] | None = None
    ) -> None:
        self.leaf_tls = leaf_tls  # (certificate, key) for a TLS leafnode listener
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.client_port = free_port()
        self.leaf_port = free_port()
        self.monitor_port = free_port()
        self.operator = generate(KeyKind.OPERATOR)
        self.system = generate(KeyKind.ACCOUNT)
        self.app = generate(KeyKind.ACCOUNT)
        self.operator_jwt = jwt.encode(
            jwt.operator_claims(self.operator, "TESTOP", system_account=self.system.public_key),
            self.operator,
        )
        self.system_jwt = jwt.encode(
            jwt.account_claims(self.system.public_key, "SYS", jetstream=False), self.operator
        )
        self.app_jwt = jwt.encode(jwt.account_claims(self.app.public_key, "APP"), self.operator)
        self.leaf_creds = self.issue_creds("device-leaf")
        self.client_creds = self.issue_creds("cloud-client")
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = self.dir / "hub.conf"
        self.config_path.write_text(self._config())

    def issue_creds(self, name: str, **claims: Any) -> Path:
        """Write a ``.creds`` file for a new APP user."""
        user = generate(KeyKind.USER)
        token = jwt.encode(jwt.user_claims(user.public_key, name, **claims), self.app)
        path = self.dir / f"{name}.creds"
        jwt.write_creds(path, jwt.Creds(jwt=token, seed=user.seed))
        return path

    def _config(self) -> str:
        (self.dir / "operator.jwt").write_text(self.operator_jwt)
        return (
            "server_name: hub\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'operator: "{self.dir / "operator.jwt"}"\n'
            f"system_account: {self.system.public_key}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {self.system.public_key}: "{self.system_jwt}"\n'
            f'  {self.app.public_key}: "{self.app_jwt}"\n'
            "}\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}", domain: hub }}\n'
            # advertise, not no_advertise: a 2.9 leaf refuses a hub that advertises nothing
            f'leafnodes {{ listen: "127.0.0.1:{self.leaf_port}", '
            f'advertise: "127.0.0.1:{self.leaf_port}"{self._leaf_tls()} }}\n'
        )

    def _leaf_tls(self) -> str:
        if self.leaf_tls is None:
            return ""
        cert, key = self.leaf_tls
        return f', tls: {{ cert_file: "{cert}", key_file: "{key}" }}'

    @property
    def client_url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def leaf_url(self) -> str:
        scheme = "tls" if self.leaf_tls else "nats-leaf"
        return f"{scheme}://127.0.0.1:{self.leaf_port}"

    def start(self) -> None:
        log = (self.dir / "hub.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)], stdout=log, stderr=log
        )
        log.close()
        wait_until(lambda: http_json(self.monitor_port, "/healthz"), 15, "the hub to be ready")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def leaf_connections(self) -> int:
        leafz = http_json(self.monitor_port, "/leafz")
        return int(leafz.get("leafnodes", 0)) if isinstance(leafz, dict) else 0

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()


class AgentProcess:
    """A real ``lattice-edge run`` process with its output in a log file."""

    def __init__(self, config: Path, data_dir: Path, *, env: dict[str, str] | None = None):
        self.config = config
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.log_path = data_dir.parent / f"agent-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def state_file(self) -> Path:
        return self.data_dir / "run" / "agent.json"

    def start(self, extra_args: Sequence[str] = ()) -> AgentProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CLI, "run", "--config", str(self.config), *extra_args],
            stdout=log,
            stderr=log,
            env=self.env,
        )
        log.close()
        return self

    def state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if self.process is None or data.get("pid") != self.process.pid:
            return None
        return data if isinstance(data, dict) else None

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            return self.state()

        result: dict[str, Any] = wait_until(ready, timeout, "the agent to be ready")
        return result

    def leaf_pid(self) -> int | None:
        try:
            return int((self.data_dir / "run" / "nats-server.pid").read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_all(self) -> None:
        leaf = self.leaf_pid()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if leaf is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leaf, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class NatsServerProcess:
    """A plain nats-server with JetStream on a free loopback port, for capability tests.

    Its log goes to ``nats.log`` and its JetStream store under ``js/`` in ``directory``.
    """

    def __init__(self, directory: Path, binary: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port = free_port()
        self.monitor_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServerProcess:
        log = (self.dir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.binary), "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.monitor_port), "-js", "-sd", str(self.dir / "js"),
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        wait_until(
            lambda: http_json(self.monitor_port, "/healthz?js-enabled-only=true"),
            15,
            "nats-server with JetStream to be ready",
            step=0.02,
        )
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> NatsServerProcess:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()


def start_nats_server(directory: Path, binary: Path | None = None) -> NatsServerProcess:
    """Start a JetStream-enabled nats-server in ``directory``; stop it with ``.stop()``
    (or use the result as a context manager)."""
    if binary is None:
        from agent.leaf.binary import find_nats_server

        binary = find_nats_server().path
    return NatsServerProcess(directory, binary).start()
