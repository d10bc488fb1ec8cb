"""Every command that prints data prints valid JSON with its documented keys.

The command tree is walked (``agent.cli.docs.walk``), so a command added later is covered
as soon as it exists: ``tests/unit/test_cli_tree.py`` makes it take ``--json`` (or say why
not) and give a ``--json`` example; this test runs every such example, as written in the
docstring and in docs/cli.md, against a running agent, and checks the output's top-level
keys against the docstring's ``JSON keys:`` line. A placeholder this test does not know
fails loudly.

A command whose examples need parts this test does not start (a hub with a fleet service,
a fleet directory, an MCU) is listed in ``RUN_ELSEWHERE`` with what it needs and the test
that runs it against those parts and checks its keys the same way
(``cli_testing.assert_documented_keys``). A new command is run here unless it is listed.
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
from cli_testing import documented_json
from click.testing import CliRunner
from lattice_testing import AgentProcess, free_port, run_cli

from agent.cli import cli
from agent.cli.common import DEBUG, examples_of
from agent.cli.docs import walk
from agent.identity.keys import KeyKind, generate, write_seed_file
from agent.identity.wascap import sign_module

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "fixtures" / "guests" / "echo.wasm"

_FLEET = "a fleet directory ('fleet init') and its service ('fleet serve') on a hub"
# command -> (what its examples need that a lone agent does not have, the test that runs
# it with --json against those parts and checks its keys)
RUN_ELSEWHERE: dict[str, tuple[str, str]] = {
    "fleet init": ("the fleet service's credentials on a hub", "tests/unit/test_fleet_cli.py"),
    "fleet bootstrap-creds": ("a fleet directory ('fleet init')", "tests/unit/test_fleet_cli.py"),
    "fleet token create": (_FLEET, "tests/integration/test_fleet_enroll.py"),
    "fleet token list": (_FLEET, "tests/integration/test_fleet_enroll.py"),
    "fleet token revoke": (_FLEET, "tests/integration/test_fleet_enroll.py"),
    "fleet devices": (_FLEET, "tests/integration/test_fleet_enroll.py"),
    "fleet revoke": (_FLEET + " with an enrolled device", "tests/integration/test_fleet_enroll.py"),
    "fleet deploy": (_FLEET, "tests/integration/test_fleet_rollout.py"),
    "fleet undeploy": (_FLEET, "tests/integration/test_fleet_rollout.py"),
    "fleet deployments": (_FLEET, "tests/integration/test_fleet_rollout.py"),
    "fleet status": (_FLEET, "tests/integration/test_fleet_rollout.py"),
    "enroll": ("a fleet service on a hub and a token", "tests/integration/test_fleet_enroll.py"),
    "firmware list": ("an MCU in [[firmware.devices]]", "tests/integration/test_firmware_agent.py"),
    "firmware info": ("an MCU in [[firmware.devices]]", "tests/integration/test_firmware_agent.py"),
    "firmware update": ("an MCU and a signed image", "tests/integration/test_firmware_agent.py"),
    "fleet uplink init": ("a hub's JetStream", "tests/integration/test_fleet_enroll.py"),
}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, debug = root.handlers[:], root.level, DEBUG["enabled"]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    DEBUG["enabled"] = debug


def _json_examples(*, elsewhere: bool = False) -> list[tuple[str, click.Command]]:
    """The --json examples this test runs (or, with ``elsewhere``, those it leaves out)."""
    found = []
    for path, command in walk(cli):
        if isinstance(command, click.Group) or (" ".join(path[1:]) in RUN_ELSEWHERE) != elsewhere:
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
    for example, _command in examples:
        words = [placeholders.get(word, word) for word in shlex.split(example)]
        unknown = [w for w in words if w.isupper() and w.replace("_", "").isalpha() and len(w) > 2]
        assert not unknown, f"{example!r}: no value for placeholder {unknown}"
        result = CliRunner().invoke(cli, words[1:], catch_exceptions=True)
        assert result.exit_code == 0, f"{example!r} failed: {result.output} {result.exception!r}"
        documented_json(words, result.stdout)
    assert agent.terminate() == 0


def test_the_examples_left_out_here_are_run_where_their_parts_are() -> None:
    left_out = {" ".join(command_path) for command_path in _paths(_json_examples(elsewhere=True))}
    assert left_out == set(RUN_ELSEWHERE), (
        f"RUN_ELSEWHERE names commands without a --json example: {set(RUN_ELSEWHERE) - left_out}"
    )
    for command, (needs, test_file) in RUN_ELSEWHERE.items():
        assert needs and (REPO / test_file).is_file(), f"{command}: no test {test_file}"


def _paths(examples: list[tuple[str, click.Command]]) -> set[tuple[str, ...]]:
    paths = {command: path[1:] for path, command in walk(cli)}
    return {paths[command] for _, command in examples}
