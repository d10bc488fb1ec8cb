"""The operator's day two without a running agent (issue 14): one test per rough edge a
user of wash, balena or greengrass-cli hit, each failing before the fix.

In-process through click's CliRunner where nothing else is involved; through the console
script where the process boundary is the point (stderr lines, exit codes, PATH).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from lattice_testing import CLI, run_cli

from agent.cli import cli
from agent.cli.common import DEBUG
from agent.identity.keys import KeyKind, generate, load_seed_file, write_seed_file
from agent.identity.wascap import sign_module
from agent.leaf.binary import find_nats_server
from agent.runtime.demo import DEMO_ISSUER
from agent.runtime.module import strip_custom_sections

REPO = Path(__file__).resolve().parents[2]
GUESTS = REPO / "tests" / "fixtures" / "guests"
ECHO = GUESTS / "echo.wasm"


Invoke = Callable[..., Result]


@pytest.fixture
def invoke() -> Iterator[Invoke]:
    """Run the CLI in-process; the root logger and --debug are restored afterwards."""
    root = logging.getLogger()
    handlers, level, debug = root.handlers[:], root.level, DEBUG["enabled"]

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)
    DEBUG["enabled"] = debug


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user with no config anywhere and no running agents."""
    return {
        **os.environ,
        "LATTICE_EDGE_CONFIG": "",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg-runtime"),
        **extra,
    }


# --- help ---------------------------------------------------------------------------------


def test_help_shows_the_paths_of_the_user_reading_it(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # an operator, not root
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    shown = invoke("init", "--help").output + invoke("status", "--help").output
    flat = " ".join(shown.split())
    assert str(tmp_path / "cfg" / "lattice-edge" / "agent.toml") in flat.replace(" ", "")
    assert str(tmp_path / "share" / "lattice-edge") in flat.replace(" ", "")
    assert "/etc/lattice-edge" not in shown and "/var/lib/lattice-edge" not in shown


def test_the_actor_group_says_what_it_does(invoke: Invoke) -> None:
    result = invoke("actor", "--help")
    summary = result.output.split("\n\n")[1]
    for verb in ("sign", "start", "stop", "list"):
        assert verb in summary
    for shown in (result.output, invoke("--help").output):
        listing = shown.split("Commands:")[1]
        assert "..." not in listing  # no summary cut mid-sentence


def test_start_help_lists_every_reference_form(invoke: Invoke) -> None:
    shown = invoke("actor", "start", "--help").output
    for form in ("./echo.wasm", "file:///", "nats-os://BUCKET/OBJECT", "?domain=", "sha256:"):
        assert form in shown


def test_completion_is_clicks_own_script(invoke: Invoke) -> None:
    ours = run_cli("completion", "bash")
    env = {**os.environ, "_LATTICE_EDGE_COMPLETE": "bash_source"}
    clicks = subprocess.run([CLI], env=env, capture_output=True, text=True, check=False)
    assert ours.returncode == 0 and ours.stdout == clicks.stdout
    assert "_lattice_edge_completion" in ours.stdout
    for shell in ("zsh", "fish"):
        result = invoke("completion", shell)
        assert result.exit_code == 0 and "_LATTICE_EDGE_COMPLETE" in result.output


# --- profiles, keys, init ------------------------------------------------------------------


def test_profiles_show_auto_is_this_boards_profile(invoke: Invoke) -> None:
    detected = json.loads(invoke("profiles", "detect", "--json").output)
    shown = invoke("profiles", "show", "auto", "--json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["name"] == detected["profile"]
    assert report["detected"]["reason"] == detected["reason"]
    assert "budgets" in report


def test_profiles_list_json(invoke: Invoke) -> None:
    entries = json.loads(invoke("profiles", "list", "--json").output)
    names = [entry["name"] for entry in entries]
    assert "pi-zero-2w" in names and all(entry["description"] for entry in entries)


def test_keys_generate_to_stdout_writes_no_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "keys", "generate", "account", "-o", "-"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "-").exists()
    seed = result.stdout.strip()
    (tmp_path / "seed.nk").write_text(seed)
    assert load_seed_file(tmp_path / "seed.nk", KeyKind.ACCOUNT).public_key == result.stderr.strip()


def test_keys_generate_json(invoke: Invoke, tmp_path: Path) -> None:
    target = tmp_path / "cluster.nk"
    result = invoke("keys", "generate", "cluster", "-o", str(target), "--json")
    report = json.loads(result.output)
    assert report["seed"] is None and report["seed_file"] == str(target)
    assert load_seed_file(target).public_key == report["public_key"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_fresh_init_says_what_to_do_next(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    result = run_cli("init", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert f"lattice-edge trust add ACCOUNT_KEY --config {config}" in result.stderr
    assert f"lattice-edge run --config {config}" in result.stderr
    report = json.loads(
        run_cli(
            "init", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--json"
        ).stdout
    )
    assert report["result"] == "already initialised"
    assert report["host_id"] == result.stdout.strip()
    assert report["next_steps"][0]["command"].startswith("lattice-edge trust add")


# --- module checks ---------------------------------------------------------------------------


def _config(tmp_path: Path, trusted: str = "") -> Path:
    path = tmp_path / "agent.toml"
    issuers = f"['{trusted}']" if trusted else "[]"
    path.write_text(
        f"[host]\ndata_dir = '{tmp_path / 'data'}'\nprofile = 'pi-zero-2w'\n"
        f"[trust]\ntrusted_issuers = {issuers}\n"
    )
    return path


def test_inspect_reads_an_untrusted_module_and_verify_refuses_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    inspected = run_cli("actor", "inspect", str(ECHO), "--config", str(config))
    assert inspected.returncode == 0, inspected.stderr
    assert "verdict   : rejected" in inspected.stdout
    assert "..-" not in inspected.stdout and "(not admitted)" in inspected.stdout
    as_json = json.loads(run_cli("actor", "inspect", str(ECHO), "--json", "--config",
                                 str(config)).stdout)  # fmt: skip
    assert as_json["verdict"]["accepted"] is False
    refused = run_cli("actor", "verify", str(ECHO), "--config", str(config))
    assert refused.returncode == 1
    # the untrusted-issuer error names the command that trusts it
    assert f"lattice-edge trust add {DEMO_ISSUER}" in refused.stderr
    verdict = run_cli("actor", "verify", str(ECHO), "--config", str(config), "--json")
    assert verdict.returncode == 1 and json.loads(verdict.stdout)["accepted"] is False
    accepted = run_cli(
        "actor", "verify", str(ECHO), "--config", str(_config(tmp_path, DEMO_ISSUER))
    )
    assert accepted.returncode == 0 and "accepted" in accepted.stdout


def test_the_unsigned_module_error_names_our_sign_command(tmp_path: Path) -> None:
    unsigned = tmp_path / "unsigned.wasm"
    unsigned.write_bytes(strip_custom_sections(ECHO.read_bytes()))
    result = run_cli("actor", "verify", str(unsigned), "--config", str(_config(tmp_path)))
    assert result.returncode == 1
    assert "lattice-edge actor sign" in result.stderr and "wash" not in result.stderr


def test_a_trap_is_one_error_line_and_debug_shows_the_backtrace() -> None:
    args = ("actor", "call", str(GUESTS / "unreachable.wasm"), "boom", "--trust-issuer",
            DEMO_ISSUER)  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["lattice-edge: error: [trap] unreachable executed"]
    debug = run_cli("--debug", *args)
    assert debug.returncode == 1
    folded = [line for line in debug.stderr.splitlines() if "trap backtrace" in line]
    assert len(folded) == 1 and "__guest_call" in folded[0]
    assert "stderr:   0:" not in debug.stderr


def test_a_deep_recursion_trap_is_one_line_too() -> None:
    result = run_cli("actor", "call", str(GUESTS / "recursion.wasm"), "x", "--trust-issuer",
                     DEMO_ISSUER)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["lattice-edge: error: [trap] stack overflow"]


def test_call_takes_msgpack_and_base64(tmp_path: Path) -> None:
    signer = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(ECHO.read_bytes(), signer, "echo")
    module = tmp_path / "echo.wasm"
    module.write_bytes(signed)
    trust = ("--trust-issuer", signer.public_key)
    packed = run_cli("actor", "call", str(module), "Echo", '{"a": [1, "b"]}', "--msgpack", *trust)
    assert packed.returncode == 0, packed.stderr
    assert json.loads(packed.stdout) == {"a": [1, "b"]}  # msgpack both ways
    raw = run_cli("actor", "call", str(module), "Echo", "AAH/", "--base64", "--json", *trust)
    report = json.loads(raw.stdout)
    assert report["response_base64"] == "AAH/" and report["response"] == {"base64": "AAH/"}


# --- trust -----------------------------------------------------------------------------------


def test_trust_add_remove_list_edit_the_config_in_place(invoke: Invoke, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        "# my device\n[host]\nname = 'edge-7'  # keep me\n\n[trust]\n# who signs\n"
        "trusted_issuers = []\n"
    )
    config.chmod(0o640)
    account, cluster = generate(KeyKind.ACCOUNT).public_key, generate(KeyKind.CLUSTER).public_key
    added = invoke("trust", "add", account, cluster, "--config", str(config), "--json")
    assert added.exit_code == 0, added.output
    report = json.loads(added.output)
    assert report["added"] == [account, cluster] and report["reload"] is None
    text = config.read_text()
    assert "# my device" in text and "# keep me" in text and "# who signs" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    listed = json.loads(invoke("trust", "list", "--config", str(config), "--json").output)
    assert listed["trusted_issuers"] == [account] and listed["cluster_issuers"] == [cluster]
    again = invoke("trust", "add", account, "--config", str(config))
    assert "already trusted" in again.output
    removed = json.loads(
        invoke("trust", "remove", account, "--config", str(config), "--json").output
    )
    assert removed["removed"] == [account] and removed["trusted_issuers"] == []
    wrong = invoke("trust", "add", generate(KeyKind.USER).public_key, "--config", str(config))
    assert wrong.exit_code != 0 and "neither a public account key" in str(wrong.exception)


# --- nats-server ------------------------------------------------------------------------------


def _fake_server(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fake = directory / "nats-server"
    fake.write_text(f"#!/bin/sh\necho 'nats-server: v{version}'\n")
    fake.chmod(0o755)
    return fake


def test_the_bundled_server_wins_over_an_older_one_on_path(tmp_path: Path) -> None:
    bundled = find_nats_server()
    _fake_server(tmp_path / "bin", "2.9.10")
    env = _env(tmp_path, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert find_nats_server().path == bundled.path
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 3  # no agent runs
    binary = json.loads(result.stdout)["leaf"]["binary"]
    assert (binary["path"], binary["version"]) == (str(bundled.path), bundled.version_text)
    assert "nats-srv : " + bundled.version_text in run_cli("status", env=env).stdout


def test_a_newer_server_on_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    newer = _fake_server(tmp_path / "bin", "9.0.0")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert find_nats_server().path == newer
    assert find_nats_server(_fake_server(tmp_path / "old", "2.9.10")).version == (2, 9, 10)


# --- logs --------------------------------------------------------------------------------------


def _run_file(data_dir: Path, **info: object) -> None:
    (data_dir / "run").mkdir(parents=True)
    record = {"pid": os.getpid(), "host_id": "N" * 56, "data_dir": str(data_dir), **info}
    (data_dir / "run" / "agent.json").write_text(json.dumps(record))


def test_logs_reads_the_journal_when_systemd_runs_the_agent(tmp_path: Path) -> None:
    journal = tmp_path / "bin" / "journalctl"
    journal.parent.mkdir()
    journal.write_text('#!/bin/sh\necho "journal: $*"\n')
    journal.chmod(0o755)
    data = tmp_path / "data"
    _run_file(data, systemd_unit="lattice-edge.service")
    config = tmp_path / "agent.toml"
    config.write_text(f"[host]\ndata_dir = '{data}'\n")
    env = _env(tmp_path, PATH=f"{journal.parent}:{os.environ['PATH']}")
    result = run_cli("logs", "-n", "7", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "journal: -u lattice-edge.service -n 7 --no-pager -o cat"


def test_logs_reads_the_log_file_otherwise(tmp_path: Path) -> None:
    log = tmp_path / "log" / "agent.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    config = tmp_path / "agent.toml"
    config.write_text(f"[host]\ndata_dir = '{tmp_path / 'data'}'\n[log]\nfile = '{log}'\n")
    result = run_cli("logs", "-n", "3", "--config", str(config), env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["line 97", "line 98", "line 99"]
    bare = tmp_path / "bare.toml"
    bare.write_text(f"[host]\ndata_dir = '{tmp_path / 'data2'}'\n")
    nowhere = run_cli("logs", "--config", str(bare), env=_env(tmp_path, PATH="/nonexistent"))
    assert nowhere.returncode == 1 and "set [log] file" in nowhere.stderr


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_says_what_it_is_doing(tmp_path: Path) -> None:
    """packaging/bootstrap.sh prints a line per step with the time taken so far.

    Run in a copy of the tree whose .venv holds stand-ins for python and pip, so no
    package is installed: what is checked is what the script says.
    """
    (tmp_path / "packaging").mkdir()
    script = tmp_path / "packaging" / "bootstrap.sh"
    script.write_text((REPO / "packaging" / "bootstrap.sh").read_text())
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "pip"):
        stub = bin_dir / name
        stub.write_text('#!/bin/sh\necho "$0 $*" >> "$(dirname "$0")/calls"\n')
        stub.chmod(0o755)
    result = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("bootstrap: [")]
    assert len(steps) >= 2, result.stderr
    assert all("s]" in line.split()[1] for line in steps)
    assert "install" in (bin_dir / "calls").read_text()


def test_seed_files_stay_out_of_json(tmp_path: Path) -> None:
    seed = tmp_path / "issuer.nk"
    write_seed_file(seed, generate(KeyKind.ACCOUNT))
    result = run_cli(
        "actor", "sign", str(ECHO), "-o", str(tmp_path / "s.wasm"), "--issuer-seed", str(seed),
        "--name", "Echo", "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["module_key"].startswith("M") and load_seed_file(seed).seed not in result.stdout


def test_worker_stderr_folds_a_backtrace_split_across_chunks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from agent.runtime.workerlog import StderrLog

    async def feed() -> None:
        log = StderrLog("0.1", logging.getLogger("test.workerlog"))
        log.feed(b"==== wasm backtrace:\n")
        for start in range(0, 400, 100):
            log.feed(
                b"".join(
                    b"  %d: 0x000092 - .unnamed!$func3\n" % n for n in range(start, start + 100)
                )
            )
            await asyncio.sleep(0.01)
        log.feed(b"a line of its own\n")
        log.close()

    with caplog.at_level(logging.DEBUG, "test.workerlog"):
        asyncio.run(feed())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("worker 0.1 trap backtrace: 0: 0x000092 - .unnamed!$func3;")
    assert messages[0].endswith("(+392 more frames)")
    assert messages[1] == "worker 0.1 stderr: a line of its own"
    assert caplog.records[0].levelno == logging.DEBUG
