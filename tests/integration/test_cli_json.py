"""Every command that prints data prints valid JSON with its documented keys.

The command tree is walked (``agent.cli.docs.walk``), so a command added later is covered
as soon as it exists: ``tests/unit/test_cli_tree.py`` makes it take ``--json`` (or say why
not) and give a ``--json`` example; this test runs every such example, as written in the
docstring and in docs/cli.md, against a running agent, and checks the output's top-level
keys against the docstring's ``JSON keys:`` line. A placeholder this test does not know
fails loudly.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from lattice_testing import AgentProcess, free_port, run_cli

from agent.cli import cli
from agent.cli.common import DEBUG, examples_of, json_keys_of
from agent.cli.docs import walk
from agent.identity.keys import KeyKind, generate, write_seed_file
from agent.identity.wascap import sign_module

pytestmark = pytest.mark.integration

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, debug = root.handlers[:], root.level, DEBUG["enabled"]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    DEBUG["enabled"] = debug


def _json_examples() -> list[tuple[str, click.Command]]:
    found = []
    for _, command in walk(cli):
        if isinstance(command, click.Group):
            continue
        found += [(e, command) for e in examples_of(command) if "--json" in shlex.split(e)]
    # what stops or removes things goes last, so the rest find them in place
    return sorted(found, key=lambda item: any(w in item[0] for w in (" stop ", " remove ")))


def test_every_json_example_prints_its_documented_keys(
    tmp_path: Path,
    agent_factory: type[AgentProcess],
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    issuer = generate(KeyKind.ACCOUNT)
    write_seed_file(work / "issuer.nk", issuer)
    signed, _ = sign_module(ECHO.read_bytes(), issuer, "echo")
    (work / "echo.wasm").write_bytes(signed)
    config, data = tmp_path / "agent.toml", tmp_path / "data"
    init = run_cli(
        "init", "--config", str(config), "--data-dir", str(data), "--trust-issuer",
        issuer.public_key, "--listen", f"127.0.0.1:{free_port()}",
        "--monitor", f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    env = {
        "LATTICE_EDGE_CONFIG": str(config),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
        "XDG_CONFIG_HOME": str(tmp_path / "home-config"),
    }
    agent = agent_factory(config, data, env=env).start()
    agent.wait_ready()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(work)
    started = run_cli("actor", "start", "echo.wasm", "--json", env={**os.environ})
    assert started.returncode == 0, started.stderr
    placeholders = {
        "ACTOR_KEY": json.loads(started.stdout)["public_key"],
        "ACCOUNT_KEY": generate(KeyKind.ACCOUNT).public_key,
    }

    examples = _json_examples()
    assert len(examples) >= 18  # every data command of today's tree, at least
    for example, command in examples:
        words = [placeholders.get(word, word) for word in shlex.split(example)]
        unknown = [w for w in words if w.isupper() and w.replace("_", "").isalpha() and len(w) > 2]
        assert not unknown, f"{example!r}: no value for placeholder {unknown}"
        result = CliRunner().invoke(cli, words[1:], catch_exceptions=True)
        assert result.exit_code == 0, f"{example!r} failed: {result.output} {result.exception!r}"
        try:
            output = json.loads(result.stdout)
        except ValueError:
            pytest.fail(f"{example!r} did not print JSON: {result.stdout!r}")
        documented = json_keys_of(command)
        assert documented is not None
        keys, is_list = documented
        rows = output if is_list else [output]
        assert isinstance(rows, list) and rows, f"{example!r}: {output!r}"
        for row in rows:
            assert isinstance(row, dict), f"{example!r}: {row!r}"
            assert sorted(row) == sorted(keys), f"{example!r} keys differ from its docstring"
    assert agent.terminate() == 0
