"""The library under the operator commands: reload plans, trust edits, the running-agent
index and config choice, the log file and its reader."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import AgentStateError, ConfigError
from agent.identity.keys import KeyKind, generate
from agent.logs import setup_logging
from agent.logview import follow_file, log_source, tail_file
from agent.reload import plan_reload
from agent.running import register, resolve_config, running_agents, unregister
from agent.trustedit import edit_trust


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- reload plans ------------------------------------------------------------------------------


def test_a_reload_takes_the_runtime_keys_and_reports_the_rest(tmp_path: Path) -> None:
    issuer = generate(KeyKind.ACCOUNT).public_key
    path = write(tmp_path / "a.toml", "[host]\nname = 'a'\n[leaf]\nlisten = '127.0.0.1:4222'\n")
    before = load_config(path, env={})
    write(path, "[host]\nname = 'b'\nlabels = { site = 'x' }\n"
                "[leaf]\nlisten = '127.0.0.1:5222'\n"
                f"[trust]\ntrusted_issuers = ['{issuer}']\n[budgets]\nmax_actors = 3\n"
                "[log]\nlevel = 'debug'\n")  # fmt: skip
    plan = plan_reload(before, load_config(path, env={}))
    assert [c.key for c in plan.changed] == ["host.labels", "log.level", "trust.trusted_issuers"]
    assert [c.key for c in plan.restart_needed] == [
        "budgets.max_actors",
        "host.name",
        "leaf.listen",
    ]
    effective = plan.effective
    assert effective.trust.trusted_issuers == (issuer,)
    assert effective.host.labels == {"site": "x"} and effective.log_level == "debug"
    assert effective.host.name == "a" and str(effective.leaf.listen) == "127.0.0.1:4222"
    # what waits for a restart is reported again by the next reload
    again = plan_reload(effective, load_config(path, env={}))
    assert not again.changed and [c.key for c in again.restart_needed] == [
        "budgets.max_actors", "host.name", "leaf.listen"
    ]  # fmt: skip
    report = plan.to_json()
    assert report["config"] == str(path.absolute())
    assert {"key": "leaf.listen", "old": "127.0.0.1:4222", "new": "127.0.0.1:5222"} in report[
        "restart_needed"
    ]
    json.dumps(report)  # JSON-ready


def test_an_unchanged_file_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "[host]\nname = 'a'\n")
    plan = plan_reload(load_config(path, env={}), load_config(path, env={}))
    assert not plan.changed and not plan.restart_needed
    assert plan.summary() == "config reloaded: changed nothing"


# --- trust edits -------------------------------------------------------------------------------


def test_trust_edit_keeps_everything_else_byte_for_byte(tmp_path: Path) -> None:
    head = "# device 7\n[host]\nname = 'x'  # keep\n\n[trust]\n# signers\n"
    tail = "allow_unsigned = false\n\n[log]\nlevel = 'info'\n"
    path = write(tmp_path / "a.toml", head + 'trusted_issuers = [\n  "A", # "]"\n]\n' + tail)
    path.write_text(
        path.read_text().replace('"A"', '"' + generate(KeyKind.ACCOUNT).public_key + '"')
    )
    new = generate(KeyKind.ACCOUNT).public_key
    edit = edit_trust(path, add=[new], env={})
    text = path.read_text()
    assert text.startswith(head) and text.endswith(tail)
    assert edit.added == (new,) and len(edit.trusted_issuers) == 2


def test_trust_edit_adds_a_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "[host]\nname = 'x'")
    key = generate(KeyKind.CLUSTER).public_key
    edit_trust(path, add=[key], env={})
    assert load_config(path, env={}).trust.cluster_issuers == (key,)


def test_trust_edit_refuses_what_it_cannot_edit_safely(tmp_path: Path) -> None:
    key = generate(KeyKind.ACCOUNT).public_key
    inline = write(tmp_path / "inline.toml", "trust = { trusted_issuers = [] }\n")
    with pytest.raises(ConfigError, match="inline or dotted"):
        edit_trust(inline, add=[key], env={})
    assert inline.read_text() == "trust = { trusted_issuers = [] }\n"
    broken = write(tmp_path / "broken.toml", "[trust\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        edit_trust(broken, add=[key], env={})
    invalid = write(tmp_path / "invalid.toml", "[leaf]\nlisten = 'nope'\n")
    with pytest.raises(ConfigError, match=r"leaf\.listen"):  # run's loader refuses the result
        edit_trust(invalid, add=[key], env={})
    assert "trust" not in invalid.read_text()
    with pytest.raises(ConfigError, match="neither"):
        edit_trust(invalid, add=["not-a-key"], env={})


def test_trust_edit_warns_about_an_environment_override(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "")
    key = generate(KeyKind.ACCOUNT).public_key
    edit = edit_trust(path, add=[key], env={"LATTICE_EDGE_TRUST_TRUSTED_ISSUERS": "[]"})
    assert edit.warnings and "LATTICE_EDGE_TRUST_TRUSTED_ISSUERS" in edit.warnings[0]


# --- running agents and the config a command uses ------------------------------------------


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A user with their own agent index and no config at the default places."""
    monkeypatch.setattr("agent.running.default_config_path", lambda: tmp_path / "none.toml")
    monkeypatch.setattr("agent.running.SYSTEM_CONFIG", tmp_path / "etc.toml")
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "runtime"), "XDG_CONFIG_HOME": str(tmp_path / "c")}
    yield env


def test_an_operator_falls_back_to_the_system_config(tmp_path: Path, index: dict[str, str]) -> None:
    system = write(tmp_path / "etc.toml", "[host]\nname = 'service'\n")
    choice = resolve_config(None, index)
    assert (choice.path, choice.origin) == (system, "the system config")
    assert choice.config.host.name == "service"


def _fake_agent(tmp_path: Path, name: str, pid: int, env: dict[str, str]) -> Path:
    config = write(tmp_path / f"{name}.toml", f"[host]\ndata_dir = '{tmp_path / name}'\n")
    run = tmp_path / name / "run"
    run.mkdir(parents=True)
    info = {"pid": pid, "config": str(config), "data_dir": str(tmp_path / name)}
    (run / "agent.json").write_text(json.dumps(info))
    assert register(info, env) is not None
    return config


def test_the_one_running_agent_gives_the_config(tmp_path: Path, index: dict[str, str]) -> None:
    assert resolve_config(None, index).origin == "no config file found"
    config = _fake_agent(tmp_path, "a", os.getpid(), index)
    choice = resolve_config(None, index)
    assert choice.path == config and choice.origin == f"the running agent, pid {os.getpid()}"
    explicit = write(tmp_path / "mine.toml", "")
    assert resolve_config(explicit, index).path == explicit
    assert resolve_config(None, {**index, "LATTICE_EDGE_CONFIG": str(explicit)}).path == explicit
    assert resolve_config(None, index, follow_running=False).path is None
    _fake_agent(tmp_path, "b", os.getppid(), index)
    with pytest.raises(ConfigError, match="2 agents are running for this user"):
        resolve_config(None, index)
    unregister(os.getppid(), index)
    assert [a.config for a in running_agents(index)] == [config]


def test_stale_pointers_are_ignored_and_removed(tmp_path: Path, index: dict[str, str]) -> None:
    _fake_agent(tmp_path, "a", 2**22 + 12345, index)  # no such process
    config = _fake_agent(tmp_path, "b", os.getpid(), index)
    (tmp_path / "b" / "run" / "agent.json").write_text(json.dumps({"pid": 1}))  # pid reused
    assert running_agents(index) == []
    assert list((tmp_path / "runtime" / "lattice-edge" / "agents").iterdir()) == []
    assert resolve_config(None, index).path is None
    del config


# --- the log file ------------------------------------------------------------------------------


def test_the_log_file_is_rotated_at_its_cap(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "agent.log"
    config = load_config(
        write(
            tmp_path / "a.toml", f"[log]\nfile = '{log}'\nfile_max_mb = 0.01\nfile_backups = 2\n"
        ),
        env={},
    )
    assert config.log_file is not None and config.log_file.max_bytes == int(0.01 * 2**20)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info", log_file=config.log_file)
        for n in range(2000):
            logging.getLogger("lattice_edge.test").info("line %d %s", n, "x" * 40)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(p.stat().st_size <= config.log_file.max_bytes + 200 for p in log.parent.iterdir())
    assert tail_file(log, 1)[0].endswith("line 1999 " + "x" * 40)


def test_log_file_keys_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log\.file_backups"):
        load_config(write(tmp_path / "a.toml", "[log]\nfile = 'x.log'\nfile_backups = 0\n"), env={})


def test_follow_reads_across_a_rotation(tmp_path: Path) -> None:
    log = write(tmp_path / "agent.log", "old\n")
    lines = follow_file(log, interval=0.01)
    with log.open("a") as handle:
        handle.write("one\n")
    assert next(lines) == "one"
    log.rename(tmp_path / "agent.log.1")
    write(log, "two\n")
    assert next(lines) == "two"
    lines.close()


def test_where_the_log_is(tmp_path: Path) -> None:
    bare = load_config(write(tmp_path / "a.toml", ""), env={})
    assert log_source(bare, {"systemd_unit": "edge.service"}).unit == "edge.service"
    assert log_source(bare, {"log_file": "/x.log"}).path == Path("/x.log")
    with pytest.raises(AgentStateError, match="set \\[log\\] file"):
        log_source(bare, {"pid": 1}, journal_has=lambda unit: True)  # running, to stderr
    assert log_source(bare, None, journal_has=lambda unit: True).unit == "lattice-edge.service"
    with pytest.raises(AgentStateError, match="set \\[log\\] file"):
        log_source(bare, None, journal_has=lambda unit: False)


def test_trust_edit_keeps_the_files_owner_and_says_when_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "a.toml", "[trust]\ntrusted_issuers = []\n")
    path.chmod(0o640)
    if os.geteuid() == 0:  # as root (CI), the edit must keep the service's owner
        os.chown(path, 4321, 4321)
    edit_trust(path, add=[generate(KeyKind.ACCOUNT).public_key], env={})
    info = path.stat()
    assert info.st_mode & 0o777 == 0o640
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (4321, 4321)
    before = path.read_text()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("agent.trustedit.rewrite_atomic", refuse)
    with pytest.raises(ConfigError, match="cannot write: Permission denied"):
        edit_trust(path, add=[generate(KeyKind.ACCOUNT).public_key], env={})
    assert path.read_text() == before
