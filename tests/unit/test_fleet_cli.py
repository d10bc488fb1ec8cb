"""``lattice-edge fleet init`` and friends without a hub: what they print and refuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cli_testing import documented_json
from lattice_testing import run_cli

from agent.identity import jwt
from agent.identity.keys import KeyKind, generate


def service_creds(tmp_path: Path) -> tuple[str, Path]:
    account, user = generate(KeyKind.ACCOUNT), generate(KeyKind.USER)
    path = tmp_path / "service.creds"
    token = jwt.encode(jwt.user_claims(user.public_key, "fleet-service"), account)
    jwt.write_creds(path, jwt.Creds(jwt=token, seed=user.seed))
    return account.public_key, path


def init_args(tmp_path: Path, account: str, creds: Path, *extra: str) -> list[str]:
    return [
        "fleet", "init", "--hub", "nats://hub.example:4222", "--creds", str(creds),
        "--account", account, "--leaf-url", "tls://hub.example:7422", "--js-domain", "hub",
        "--lattice", "prod", *extra,
    ]  # fmt: skip


def test_init_prints_the_entries_and_the_nsc_commands(tmp_path: Path) -> None:
    account, creds = service_creds(tmp_path)
    env = {**os.environ, "LATTICE_EDGE_FLEET_DIR": str(tmp_path / "from-env")}
    result = run_cli(*init_args(tmp_path, account, creds), env=env)
    assert result.returncode == 0, result.stderr
    head, _, commands = result.stdout.partition("\n# fleet ")
    printed = json.loads(head)
    assert printed["account"] == account
    device, bootstrap = printed["signing_keys"]
    assert device["kind"] == "user_scope" and device["role"] == "lattice-edge-device"
    assert "wasmbus.ctl.prod.cmd.{{name()}}.*" in device["template"]["sub"]["allow"]
    assert bootstrap["role"] == "lattice-edge-bootstrap"
    assert f'nsc edit account --name "$FLEET_ACCOUNT" --sk {device["key"]}' in commands
    assert "nsc push" in commands
    assert (tmp_path / "from-env" / "fleet.toml").is_file()  # --dir fell back to the variable
    again = run_cli(*init_args(tmp_path, account, creds), env=env)
    assert again.returncode == 1 and "already holds a fleet" in again.stderr


def test_init_with_an_operator_seed_rewrites_the_account_jwt(tmp_path: Path) -> None:
    account_key, creds = service_creds(tmp_path)
    operator = generate(KeyKind.OPERATOR)
    seed = tmp_path / "operator.nk"
    seed.write_text(operator.seed + "\n")
    account_jwt = tmp_path / "account.jwt"
    account_jwt.write_text(jwt.encode(jwt.account_claims(account_key, "APP"), operator))
    words = init_args(tmp_path, account_key, creds, "--dir", str(tmp_path / "f"), "--json",
                      "--operator-seed", str(seed), "--account-jwt", str(account_jwt))  # fmt: skip
    result = run_cli(*words)
    assert result.returncode == 0, result.stderr
    printed = documented_json(words, result.stdout)
    assert printed["account_jwt"] == str(account_jwt) and printed["dir"] == str(tmp_path / "f")
    claims = jwt.verify(account_jwt.read_text().strip(), issuer_kind=KeyKind.OPERATOR).claims
    assert claims["nats"]["signing_keys"] == printed["signing_keys"]
    half = run_cli(*init_args(tmp_path, account_key, creds, "--dir", str(tmp_path / "g"),
                              "--operator-seed", str(seed)))  # fmt: skip
    assert half.returncode == 1 and "go together" in half.stderr


def test_commands_without_a_fleet_or_a_service_say_so(tmp_path: Path) -> None:
    missing = run_cli("fleet", "devices", "--dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "holds no fleet" in missing.stderr
    account, creds = service_creds(tmp_path)
    fleet_dir = tmp_path / "f"
    assert run_cli(*init_args(tmp_path, account, creds, "--dir", str(fleet_dir))).returncode == 0
    bad = run_cli("fleet", "token", "create", "--dir", str(fleet_dir), "--expires", "1w")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    boot = tmp_path / "boot.creds"
    words = ["fleet", "bootstrap-creds", "--dir", str(fleet_dir), "-o", str(boot), "--expires",
             "30d", "--json"]  # fmt: skip
    made = run_cli(*words)
    assert made.returncode == 0, made.stderr
    printed = documented_json(words, made.stdout)
    claims = jwt.decode(jwt.read_creds(boot).jwt).claims
    assert claims["name"].startswith("bootstrap-") and claims["exp"] - claims["iat"] == 30 * 86400
    assert printed["creds_file"] == str(boot) and printed["user_key"] == claims["sub"]
    assert printed["expires_at"] == claims["exp"]
    assert claims["name"] == f"bootstrap-{printed['fleet']}"
    assert boot.stat().st_mode & 0o777 == 0o600
    again = run_cli("fleet", "bootstrap-creds", "--dir", str(fleet_dir), "-o", str(boot))
    assert again.returncode == 1 and "pass --force" in again.stderr
