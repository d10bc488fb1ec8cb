"""``lattice-edge actor inspect`` and ``actor sign`` through the console script."""

from __future__ import annotations

import json
from pathlib import Path

from lattice_testing import run_cli

from agent.config import embedded_default
from agent.runtime.demo import DEMO_ISSUER

GUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "guests"
ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"


def test_embedded_default_trusts_only_the_demo_issuer() -> None:
    assert embedded_default(env={}).trust.trusted_issuers == (DEMO_ISSUER,)


def test_inspect_a_signed_third_party_actor(third_party_dir: Path, tmp_path: Path) -> None:
    module = third_party_dir / "echo_messaging_v0.9.0.wasm"
    config = tmp_path / "agent.toml"
    config.write_text("[host]\nprofile = 'pi-zero-2w'\n")
    result = run_cli(
        "actor", "inspect", str(module), "--json", "--config", str(config),
        "--trust-issuer", ECHO_ISSUER,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"]["accepted"] is True
    assert report["claims"]["subject"] == "MDJ5BWS6JXSWOZL2ZENW2D4FBSHQ5ZMFGEGJB33TLKYKMXTLLAXINU36"
    assert report["hash_matches"] is True
    # no declared maximum: admitted with the Pi Zero's per-actor budget
    assert report["memory_admitted"]["max_pages"] == 64


def test_inspect_rejects_an_untrusted_issuer(third_party_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    result = run_cli(
        "actor", "inspect", str(third_party_dir / "logger.wasm"), "--config", str(config)
    )
    assert result.returncode == 1
    assert "verdict   : rejected" in result.stdout
    assert result.stderr.count("lattice-edge: error:") == 1
    assert "not in trusted_issuers" in result.stderr


def test_inspect_garbage_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\x7fELF not wasm at all")
    result = run_cli("actor", "inspect", str(junk), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["verdict"]["accepted"] is False
    missing = run_cli("actor", "inspect", str(tmp_path / "absent.wasm"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_sign_then_inspect(tmp_path: Path) -> None:
    issuer_seed = tmp_path / "issuer.nk"
    issuer = run_cli("keys", "generate", "account", "-o", str(issuer_seed)).stdout.strip()
    signed = tmp_path / "signed.wasm"
    result = run_cli(
        "actor", "sign", str(GUESTS / "echo.wasm"), "-o", str(signed),
        "--issuer-seed", str(issuer_seed), "--name", "Echo", "--cap", "wasmcloud:messaging",
        "--tag", "demo", "--rev", "7", "--ver", "1.2.3", "--expires", "30",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    subject = result.stdout.strip()
    assert subject.startswith("M")
    report = json.loads(
        run_cli("actor", "inspect", str(signed), "--json", "--trust-issuer", issuer).stdout
    )
    claims = report["claims"]
    assert report["verdict"]["accepted"] is True
    assert (claims["issuer"], claims["subject"], claims["name"]) == (issuer, subject, "Echo")
    assert claims["caps"] == ["wasmcloud:messaging"] and claims["tags"] == ["demo"]
    assert (claims["rev"], claims["ver"]) == (7, "1.2.3")
    assert claims["expires"] is not None


def test_sign_needs_an_account_seed(tmp_path: Path) -> None:
    seed = tmp_path / "user.nk"
    run_cli("keys", "generate", "user", "-o", str(seed))
    result = run_cli(
        "actor", "sign", str(GUESTS / "echo.wasm"), "-o", str(tmp_path / "x.wasm"),
        "--issuer-seed", str(seed), "--name", "X",
    )  # fmt: skip
    assert result.returncode == 1 and "expected account" in result.stderr
    assert not (tmp_path / "x.wasm").exists()
