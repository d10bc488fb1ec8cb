"""``lattice-edge actor inspect`` and ``actor sign`` through the console script."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from lattice_testing import CLI, run_cli

from agent.config import embedded_default
from agent.runtime.demo import DEMO_ISSUER

REPO = Path(__file__).resolve().parents[2]
GUESTS = REPO / "tests" / "fixtures" / "guests"
DEMO = REPO / "agent" / "runtime" / "demo" / "echo.wasm"
ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"


def test_embedded_default_runs_the_demo_but_nothing_else_its_issuer_signs(
    tmp_path: Path,
) -> None:
    assert DEMO_ISSUER not in embedded_default(env={}).trust.trusted_issuers
    env = {"LATTICE_EDGE_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "none")}
    demo = run_cli("actor", "call", str(DEMO), "Greet", "x", env={**os.environ, **env})
    assert demo.returncode == 0 and demo.stdout == "Hello, x!", demo.stderr
    # Anyone holding the public demo seed can sign a module; the embedded default refuses it.
    seed = REPO / "tests" / "fixtures" / "demo_issuer.nk"
    signed = tmp_path / "evil.wasm"
    sign = run_cli(
        "actor", "sign", str(GUESTS / "echo.wasm"), "-o", str(signed),
        "--issuer-seed", str(seed), "--name", "evil", env={**os.environ, **env},
    )  # fmt: skip
    assert sign.returncode == 0, sign.stderr
    evil = run_cli("actor", "call", str(signed), "Echo", "x", env={**os.environ, **env})
    assert evil.returncode == 1 and "not in trusted_issuers" in evil.stderr


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
    assert result.returncode == 0  # inspect reads untrusted modules; verify refuses them
    assert "verdict   : rejected" in result.stdout and "not in trusted_issuers" in result.stdout
    verify = run_cli(
        "actor", "verify", str(third_party_dir / "logger.wasm"), "--config", str(config)
    )
    assert verify.returncode == 1
    assert verify.stderr.count("lattice-edge: error:") == 1
    assert "not in trusted_issuers" in verify.stderr


def test_inspect_garbage_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\x7fELF not wasm at all")
    result = run_cli("actor", "inspect", str(junk), "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["verdict"]["accepted"] is False
    assert run_cli("actor", "verify", str(junk)).returncode == 1
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


DEMO = Path(__file__).resolve().parents[2] / "agent" / "runtime" / "demo" / "echo.wasm"


def test_call_the_demo_actor() -> None:
    result = run_cli("actor", "call", str(DEMO), "Greet", "world")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!"
    assert "[actor] Hello, world!" in result.stderr  # its __console_log line


def test_call_json_reports_host_calls() -> None:
    result = run_cli("actor", "call", str(DEMO), "Random", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (call,) = report["host_calls"]
    assert call["namespace"] == "wasmcloud:builtin:numbergen"
    assert call["operation"] == "NumberGen.Random32"
    assert len(base64.b64decode(report["response_base64"])) > 0


def test_call_payload_from_stdin(tmp_path: Path) -> None:
    data = tmp_path / "payload.bin"
    data.write_bytes(b"\x00\x01binary\xff")
    with data.open("rb") as stdin:
        result = subprocess.run(
            [CLI, "actor", "call", str(DEMO), "Echo", "-"], stdin=stdin, capture_output=True
        )
    assert result.returncode == 0 and result.stdout == b"\x00\x01binary\xff"


def test_call_failures_exit_non_zero_with_the_reason(third_party_dir: Path) -> None:
    unknown = run_cli("actor", "call", str(DEMO), "Nope")
    assert unknown.returncode == 1 and "unknown operation Nope" in unknown.stderr
    unsigned = third_party_dir / "hello_zig.wasm"
    refused = run_cli("actor", "call", str(unsigned), "hello", "x")
    assert refused.returncode == 1 and "unsigned" in refused.stderr.lower()
    allowed = run_cli("actor", "call", str(unsigned), "hello", "this is a test", "--allow-unsigned")
    # hello_zig's host call has no link here, and the guest reports that as its error
    assert allowed.returncode == 1
    assert "Host error: no link exists for sample on binding myBinding" in allowed.stderr


def test_call_times_out_an_infinite_loop() -> None:
    result = run_cli(
        "actor", "call", str(GUESTS / "loop.wasm"), "spin", "--timeout", "0.5",
        "--trust-issuer", DEMO_ISSUER,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "deadline" in result.stderr.lower() or "timed out" in result.stderr.lower()
