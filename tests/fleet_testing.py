"""Test helpers for fleets, with real parts: a hub whose resolver takes account JWT updates
(as NGS does when ``nsc push`` sends one), ``fleet`` CLI runs, ``fleet serve`` processes and
enrolled devices. Built on :mod:`lattice_testing`; imported by the fleet tests and the
fleet benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from cli_testing import documented_json
from lattice_testing import CLI, Hub, free_port, run_cli, wait_until

from agent.fleet import protocol
from agent.identity import jwt
from agent.identity.keys import KeyKind, KeyPair, generate, write_seed_file


class FleetHub(Hub):
    """A :class:`Hub` with a ``full`` (nats-based) account resolver.

    Account JWT updates signed by the operator are accepted on ``$SYS.REQ.CLAIMS.UPDATE``
    (what ``nsc push`` sends), so a test can add the fleet's signing keys and revocations
    to the running hub exactly as a fleet owner does on NGS.
    """

    def __init__(self, directory: Path, binary: Path) -> None:
        super().__init__(directory, binary)
        self.sys_creds = self.dir / "sys.creds"
        sys_user = generate(KeyKind.USER)
        token = jwt.encode(jwt.user_claims(sys_user.public_key, "sys"), self.system)
        jwt.write_creds(self.sys_creds, jwt.Creds(jwt=token, seed=sys_user.seed))
        self.operator_seed = self.dir / "operator.nk"
        write_seed_file(self.operator_seed, self.operator)
        self.account_jwt = self.dir / "app.jwt"
        self.account_jwt.write_text(self.app_jwt + "\n")

    def _config(self) -> str:
        text = super()._config()
        resolver = (
            f'resolver: {{ type: full, dir: "{self.dir / "accounts"}", allow_delete: false }}\n'
        )
        return text.replace("resolver: MEMORY\n", resolver)

    async def push_account(self, token: str | None = None) -> None:
        """Send an account JWT (default: the one in :attr:`account_jwt`) to the resolver."""
        body = (token or self.account_jwt.read_text().strip()).encode()
        client = await nats.connect(self.client_url, user_credentials=str(self.sys_creds))
        try:
            reply = await client.request("$SYS.REQ.CLAIMS.UPDATE", body, timeout=5)
        finally:
            await client.close()
        data = json.loads(reply.data)
        if data.get("data", {}).get("code") != 200:
            raise AssertionError(f"the hub refused the account JWT: {data}")


def fleet_cli(*args: str, fleet_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``lattice-edge fleet ARGS --dir FLEET_DIR``; with ``--json``, what a successful run
    printed has the keys its docstring documents (``cli_testing``)."""
    command, *rest = args
    if command == "token":
        sub, *rest = rest
        words = ["fleet", "token", sub, "--dir", str(fleet_dir), *rest]
    else:
        words = ["fleet", command, "--dir", str(fleet_dir), *rest]
    result = run_cli(*words, timeout=timeout)
    if "--json" in words and result.returncode == 0:
        documented_json(words, result.stdout)
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``lattice-edge: error:`` line of a failed command (and nothing worse)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [
        line for line in result.stderr.splitlines() if line.startswith("lattice-edge: error:")
    ]
    assert len(errors) == 1, result.stderr
    return errors[0]


class Fleet:
    """A fleet made with ``fleet init`` on a :class:`FleetHub`, its keys pushed to the hub."""

    def __init__(self, hub: FleetHub, path: Path, init_json: dict[str, Any]) -> None:
        self.hub = hub
        self.path = path
        self.init = init_json
        self.fleet_id: str = init_json["fleet"]
        self.bootstrap = path.parent / f"{path.name}-bootstrap.creds"

    @classmethod
    async def create(
        cls, hub: FleetHub, path: Path, *extra: str, lattice: str = "default"
    ) -> Fleet:
        """``fleet init`` with the operator seed (self-hosted flow), then push the JWT."""
        words = [
            "fleet", "init", "--dir", str(path), "--hub", hub.client_url,
            "--creds", str(hub.client_creds), "--account", hub.app.public_key,
            "--leaf-url", hub.leaf_url, "--lattice", lattice, "--json",
            "--operator-seed", str(hub.operator_seed), "--account-jwt", str(hub.account_jwt),
            *extra,
        ]  # fmt: skip
        printed = documented_json(words, ok(run_cli(*words)))
        assert printed["account_jwt"] == str(hub.account_jwt)
        await hub.push_account()
        fleet = cls(hub, path, printed)
        ok(fleet_cli("bootstrap-creds", "-o", str(fleet.bootstrap), fleet_dir=path))
        return fleet

    def token(self, *labels: str, expires: str | None = None) -> str:
        """One new token with ``labels`` (``K=V``)."""
        args = [arg for label in labels for arg in ("--label", label)]
        if expires:
            args += ["--expires", expires]
        return ok(fleet_cli("token", "create", *args, fleet_dir=self.path)).strip()

    def devices(self) -> list[dict[str, Any]]:
        data = json.loads(ok(fleet_cli("devices", "--json", fleet_dir=self.path)))
        devices: list[dict[str, Any]] = data["devices"]
        return devices

    def tokens(self) -> list[dict[str, Any]]:
        data = json.loads(ok(fleet_cli("token", "list", "--json", fleet_dir=self.path)))
        tokens: list[dict[str, Any]] = data["tokens"]
        return tokens


class ServeProcess:
    """A real ``lattice-edge fleet serve`` process."""

    def __init__(self, fleet_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.fleet_dir = fleet_dir
        self.env = {**os.environ, **(env or {})}
        self.log_path = fleet_dir.parent / f"serve-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CLI, "fleet", "serve", "--dir", str(self.fleet_dir)], stdout=log, stderr=log,
            env=self.env,
        )  # fmt: skip
        log.close()
        wait_until(lambda: "serving on" in self.log() or self._exited(), 30, "fleet serve")
        assert not self._exited(), self.log()
        return self

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def nats_server_29() -> Path:
    """Debian's nats-server 2.9.10 (the only armhf build), as ``packaging/bootstrap.sh
    --test`` fetches it; skips the test when absent, fails it in CI."""
    import pytest

    named = os.environ.get("LATTICE_EDGE_TEST_NATS_SERVER_29")
    repo = Path(__file__).resolve().parents[1]
    path = Path(named) if named else repo / ".venv/nats-server-2.9/usr/sbin/nats-server"
    if not path.is_file():
        message = f"nats-server 2.9 not found at {path} (run packaging/bootstrap.sh --test)"
        if os.environ.get("LATTICE_EDGE_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def init_device(
    root: Path,
    name: str,
    *extra: str,
    budgets: dict[str, float] | None = None,
    nats_server: Path | None = None,
) -> tuple[Path, Path, str, dict[str, int]]:
    """``lattice-edge init`` a standalone device in ``root/name``: (config, data, host id,
    ports). ``budgets`` are appended as a ``[budgets]`` override (a short heartbeat);
    ``nats_server`` picks the leaf's binary."""
    ports = {"client": free_port(), "monitor": free_port()}
    config, data = root / name / "agent.toml", root / name / "data"
    out = ok(run_cli(
        "init", "--config", str(config), "--data-dir", str(data), "--name", name,
        "--listen", f"127.0.0.1:{ports['client']}", "--monitor", f"127.0.0.1:{ports['monitor']}",
        *extra,
    ))  # fmt: skip
    if nats_server is not None:
        config.write_text(
            config.read_text().replace("[leaf]", f"[leaf]\nnats_server = '{nats_server}'")
        )
    if budgets:
        lines = ["", "[budgets]", *(f"{k} = {v}" for k, v in budgets.items())]
        config.write_text(config.read_text() + "\n".join(lines) + "\n")
    return config, data, out.strip(), ports


def enroll(fleet: Fleet, config: Path, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``lattice-edge enroll`` a device into ``fleet`` (``--json`` output checked as
    :func:`fleet_cli` does)."""
    words = [
        "enroll", "--url", fleet.hub.client_url, "--bootstrap-creds", str(fleet.bootstrap),
        "--token", token, "--config", str(config), *extra,
    ]  # fmt: skip
    result = run_cli(*words)
    if "--json" in words and result.returncode == 0:
        documented_json(words, result.stdout)
    return result


@contextlib.asynccontextmanager
async def connected(url: str, creds: Path | None = None, **options: Any) -> AsyncIterator[Any]:
    """A nats-py client; errors the server sends (permission violations) are collected in
    ``client.errors``. The one place the fleet tests open their own connections."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    client = await nats.connect(
        url, user_credentials=str(creds) if creds else None, error_cb=on_error,
        allow_reconnect=False, **options,
    )  # fmt: skip
    client.errors = errors
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def ping_hosts(url: str, creds: Path | None, lattice: str = "default") -> dict[str, Any]:
    """Host records answering ``ping.hosts`` within a second, by host id."""
    async with connected(url, creds) as client:
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        await client.publish(f"wasmbus.ctl.{lattice}.ping.hosts", b"{}", reply=inbox)
        found: dict[str, Any] = {}
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            host = json.loads(message.data)
            found[host["id"]] = host
        return found


async def wait_for_hosts(
    url: str, creds: Path | None, hosts: set[str], timeout: float = 40, lattice: str = "default"
) -> dict[str, Any]:
    """Ping until every host in ``hosts`` answers; their records."""
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = await ping_hosts(url, creds, lattice)
        if hosts <= set(found):
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"hosts {sorted(hosts - set(found))} never answered ping.hosts")


_CONNECT_PROBE = """
import asyncio, sys, nats
async def main():
    try:
        client = await nats.connect(sys.argv[1], user_credentials=sys.argv[2],
                                    allow_reconnect=False, connect_timeout=3)
    except Exception as exc:
        print(str(exc) or type(exc).__name__)
        return
    await client.close()
asyncio.run(main())
"""


async def connection_refused(url: str, creds: Path) -> str | None:
    """The server's refusal when connecting with ``creds``, or None if it lets them in.

    Probed from a child process: nats-py leaves the socket of a refused connection to the
    garbage collector, whose ResourceWarning would fail whichever test collects it.
    """
    import sys

    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "ignore", "-c", _CONNECT_PROBE, url, str(creds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(probe.communicate(), 30)
    return out.decode().strip() or None


def bootstrap_inbox(fleet: Fleet) -> str:
    return "_INBOX_LE." + str(jwt.decode(jwt.read_creds(fleet.bootstrap).jwt).claims["name"])


async def enroll_by_hand(
    fleet: Fleet, token: str, *, sign_user: KeyPair | None = None, sign_host: KeyPair | None = None
) -> dict[str, object]:
    """The enrollment exchange spoken directly, optionally signed with the wrong keys."""
    user, host = generate(KeyKind.USER), generate(KeyKind.SERVER)
    token_id = token.split(".")[2] if token.count(".") == 3 else "AAAAAAAAAA"
    base = f"lattice-edge.fleet.{fleet.fleet_id}.enroll"
    async with connected(fleet.hub.client_url, fleet.bootstrap,
                         inbox_prefix=bootstrap_inbox(fleet)) as boot:  # fmt: skip
        challenge = json.loads(
            (
                await boot.request(
                    f"{base}.challenge", protocol.canonical_json({"token_id": token_id})
                )
            ).data
        )
        message = protocol.enroll_message(
            fleet.fleet_id, challenge["nonce"], token_id, user.public_key, host.public_key
        )
        body = {
            "token": token, "nonce": challenge["nonce"], "user_key": user.public_key,
            "host_key": host.public_key,
            "user_signature": protocol.b64((sign_user or user).sign(message)),
            "host_signature": protocol.b64((sign_host or host).sign(message)),
            "facts": {}, "labels": {},
        }  # fmt: skip
        reply = await boot.request(f"{base}.complete", protocol.canonical_json(body), timeout=5)
    result: dict[str, object] = json.loads(reply.data)
    return result


def free_port_url() -> str:
    """A leafnode URL nothing listens on (a device's link cut)."""
    return f"nats-leaf://127.0.0.1:{free_port()}"


async def seen_hosts(fleet: Fleet) -> set[str]:
    """Hosts the fleet's reconciler has recorded (``host.*`` in its KV bucket)."""
    async with connected(fleet.hub.client_url, fleet.hub.client_creds) as client:
        kv = await client.jetstream().key_value(f"LEFLEET_{fleet.fleet_id}")
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return set()
    return {key.split(".", 1)[1] for key in keys if key.startswith("host.")}


def serve(fleet: Fleet, serves: list[ServeProcess], **env: str) -> ServeProcess:
    """Start a ``fleet serve`` for ``fleet`` (with extra environment) and track it."""
    process = ServeProcess(fleet.path, env=env).start()
    serves.append(process)
    return process
