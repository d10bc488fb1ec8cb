"""The console script's smaller commands: version, profiles, keys."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from lattice_testing import run_cli

from agent import __version__
from agent.identity.keys import KeyKind, load_seed_file


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_profiles_list_show_detect() -> None:
    listed = run_cli("profiles", "list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()][:2] == ["cm4", "generic-arm64"]
    shown = json.loads(run_cli("profiles", "show", "pi-zero-2w", "--json").stdout)
    assert shown["budgets"]["sandbox_workers"] == 1
    assert run_cli("profiles", "detect").stdout.split(":")[0] in listed.stdout
    missing = run_cli("profiles", "show", "pi9")
    assert missing.returncode == 1 and "unknown profile 'pi9'" in missing.stderr


@pytest.mark.parametrize("kind", ["operator", "account", "user", "server", "cluster", "module"])
def test_keys_generate(tmp_path: Path, kind: str) -> None:
    target = tmp_path / f"{kind}.nk"
    result = run_cli("keys", "generate", kind, "-o", str(target))
    assert result.returncode == 0, result.stderr
    public = result.stdout.strip()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    key = load_seed_file(target, KeyKind.from_name(kind))
    assert key.public_key == public
    assert key.seed not in result.stdout + result.stderr
    again = run_cli("keys", "generate", kind, "-o", str(target))
    assert again.returncode == 1 and "--force" in again.stderr
    assert load_seed_file(target).public_key == public  # nothing lost


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("fly")
    assert result.returncode == 2 and "No such command" in result.stderr
