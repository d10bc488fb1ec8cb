"""agent.runtime.admission: the gate before wasm3, with real wasm3 and fuzzed modules."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import wasm3
from _wasmgen import DEMO_WASM, GUESTS, guest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import errors
from agent.errors import MemoryLimitError, ModuleError, UnsignedModuleError
from agent.identity.keys import KeyKind, generate
from agent.identity.wascap import sign_module
from agent.runtime.admission import AdmittedModule, admit, inspect_report
from agent.runtime.demo import DEMO_ISSUER
from agent.runtime.module import MemoryLimits, iter_sections, parse_module

REPO = Path(__file__).resolve().parents[2]
ECHO_ISSUER = "ABRK5MP6QRTH7HXOVP2PR2TLDW6DPLBAF3LTGVWQRFVEF7W5VOUMACXB"
LOGGER_ISSUER = "ACOJJN6WUP4ODD75XEBKKTCCUJJCY5ZKQ56XVKYK4BEJWGVAOOQHZMCW"
TRUSTED = frozenset({DEMO_ISSUER, ECHO_ISSUER, LOGGER_ISSUER})


class MiniHost:
    """Just enough waPC host to drive a guest in wasm3 (the real one is agent.runtime.wapc)."""

    def __init__(self, code: bytes, on_host_call: Callable[[bytes, bytes, bytes, bytes], bytes]):
        self.env = wasm3.Environment()
        self.runtime = self.env.new_runtime(64 * 1024)
        self.module = self.env.parse_module(code)
        self.runtime.load(self.module)
        self.on_host_call = on_host_call
        self.request = (b"", b"")
        self.response: bytes | None = None
        self.error: bytes | None = None
        self.host_response = b""
        self.logs: list[bytes] = []
        link = self.module.link_function
        link("wapc", "__guest_request", "v(ii)", self._guest_request)
        link("wapc", "__guest_response", "v(ii)", lambda p, n: self._set("response", p, n))
        link("wapc", "__guest_error", "v(ii)", lambda p, n: self._set("error", p, n))
        link("wapc", "__console_log", "v(ii)", lambda p, n: self.logs.append(self._read(p, n)))
        link("wapc", "__host_call", "i(iiiiiiii)", self._host_call)
        link("wapc", "__host_response_len", "i()", lambda: len(self.host_response))
        link("wapc", "__host_response", "v(i)", lambda p: self._write(p, self.host_response))
        link("wapc", "__host_error_len", "i()", lambda: 0)
        link("wapc", "__host_error", "v(i)", lambda p: None)

    def _read(self, ptr: int, size: int) -> bytes:
        return bytes(self.runtime.get_memory(0)[ptr : ptr + size])

    def _write(self, ptr: int, data: bytes) -> None:
        self.runtime.get_memory(0)[ptr : ptr + len(data)] = data

    def _set(self, field: str, ptr: int, size: int) -> None:
        setattr(self, field, self._read(ptr, size))

    def _guest_request(self, op_ptr: int, payload_ptr: int) -> None:
        self._write(op_ptr, self.request[0])
        self._write(payload_ptr, self.request[1])

    def _host_call(self, *args: int) -> int:
        parts = [self._read(args[i], args[i + 1]) for i in range(0, 8, 2)]
        self.host_response = self.on_host_call(*parts)
        return 1

    def call(self, operation: str, payload: bytes) -> tuple[int, bytes | None, bytes | None]:
        self.request = (operation.encode(), payload)
        self.response = self.error = None
        rc = self.runtime.find_function("__guest_call")(len(self.request[0]), len(payload))
        return int(rc), self.response, self.error


def fixture(folder: Path, name: str) -> bytes:
    path = folder / name
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path.read_bytes()


# --- admit ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["echo_messaging_v0.9.0.wasm", "logger.wasm"])
def test_signed_fixtures_are_admitted(third_party_dir: Path, name: str) -> None:
    data = fixture(third_party_dir, name)
    admitted = admit(data, trusted_issuers=TRUSTED, allow_unsigned=False, max_pages=64)
    assert admitted.claims is not None and admitted.actor_id == admitted.claims.subject
    assert admitted.memory == MemoryLimits(17, 64)
    code_info = parse_module(admitted.code)
    assert code_info.memory == MemoryLimits(17, 64)
    # only the name section survives: wasm3 keeps the buffer alive for the actor's lifetime
    assert code_info.custom_section_names == ("name",)
    assert any("capped at the budget of 64 pages" in w for w in admitted.warnings)


def test_logger_drops_its_debug_info(third_party_dir: Path) -> None:
    data = fixture(third_party_dir, "logger.wasm")
    admitted = admit(data, trusted_issuers=TRUSTED, allow_unsigned=False, max_pages=64)
    assert len(admitted.code) < len(data) // 4


def test_unsigned_fixture(third_party_dir: Path) -> None:
    data = fixture(third_party_dir, "hello_zig.wasm")
    with pytest.raises(UnsignedModuleError):
        admit(data, trusted_issuers=TRUSTED, allow_unsigned=False, max_pages=64)
    admitted = admit(data, trusted_issuers=(), allow_unsigned=True, max_pages=64)
    assert admitted.claims is None
    assert admitted.actor_id == f"unsigned:{admitted.module_hash}"
    assert any("unsigned" in w for w in admitted.warnings)


def test_min_above_budget_is_rejected_by_admit() -> None:
    with pytest.raises(MemoryLimitError):
        admit(guest(memory=(40, None)), trusted_issuers=(), allow_unsigned=True, max_pages=16)


def test_demo_actor_runs_after_admission() -> None:
    admitted = admit(
        DEMO_WASM.read_bytes(), trusted_issuers={DEMO_ISSUER}, allow_unsigned=False, max_pages=16
    )
    calls: list[tuple[bytes, ...]] = []

    def host(*parts: bytes) -> bytes:
        calls.append(parts)
        return b"\xce\x00\x00\x00\x2a"

    host_ = MiniHost(admitted.code, host)
    assert host_.call("Echo", b"x" * 1024) == (1, b"x" * 1024, None)
    assert host_.call("Greet", b"edge") == (1, b"Hello, edge!", None)
    assert host_.logs == [b"Hello, edge!"]
    assert host_.call("Health", b"") == (1, b"\x81\xa7healthy\xc3", None)
    assert host_.call("Random", b"\xc0") == (1, b"\xce\x00\x00\x00\x2a", None)
    assert calls == [(b"default", b"wasmcloud:builtin:numbergen", b"NumberGen.Random32", b"\xc0")]
    assert host_.call("Nope", b"") == (0, None, b"unknown operation Nope")


@pytest.mark.parametrize("budget", [4, 9])
def test_memory_bomb_stops_at_the_budget_in_wasm3(budget: int) -> None:
    admitted = admit(
        (GUESTS / "membomb.wasm").read_bytes(),
        trusted_issuers={DEMO_ISSUER},
        allow_unsigned=False,
        max_pages=budget,
    )
    rc, response, _ = MiniHost(admitted.code, lambda *a: b"").call("go", b"")
    assert rc == 1 and response is not None
    assert struct.unpack("<I", response)[0] == budget


def test_echo_guest_and_big_guest() -> None:
    for name in ("echo.wasm", "big.wasm"):
        admitted = admit(
            (GUESTS / name).read_bytes(), trusted_issuers={DEMO_ISSUER}, allow_unsigned=False,
            max_pages=32,
        )  # fmt: skip
        assert MiniHost(admitted.code, lambda *a: b"").call("any", b"k" * 1024)[1] == b"k" * 1024
    assert 190_000 < (GUESTS / "big.wasm").stat().st_size < 220_000


# --- inspect_report ----------------------------------------------------------------------


def test_inspect_report_accepted(third_party_dir: Path) -> None:
    report = inspect_report(
        fixture(third_party_dir, "echo_messaging_v0.9.0.wasm"),
        trusted_issuers=TRUSTED,
        allow_unsigned=False,
        max_pages=32,
    )
    json.dumps(report)
    assert report["verdict"] == {"accepted": True, "error": None, "reason": None}
    assert report["claims"]["issuer"] == ECHO_ISSUER
    assert report["claims"]["caps"] == ["wasmcloud:messaging", "wasmcloud:builtin:logging"]
    assert report["hash_matches"] is True
    assert report["memory"] == {"min_pages": 17, "max_pages": None, "imported": False}
    assert report["memory_admitted"]["max_pages"] == 32
    assert {"module": "wasmbus", "name": "__host_call", "kind": "func"} in report["imports"]


def test_inspect_report_rejected_still_describes(third_party_dir: Path) -> None:
    report = inspect_report(
        fixture(third_party_dir, "logger.wasm"), trusted_issuers=(), allow_unsigned=False,
        max_pages=32,
    )  # fmt: skip
    json.dumps(report)
    assert report["verdict"]["accepted"] is False
    assert report["verdict"]["error"] == "UntrustedIssuerError"
    assert LOGGER_ISSUER in report["verdict"]["reason"]
    assert report["claims"]["subject"].startswith("M") and report["exports"]


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x00asm\x01\x00\x00\x00\x0a\xff"])
def test_inspect_report_never_raises(data: bytes) -> None:
    report = inspect_report(data, trusted_issuers=(), allow_unsigned=True, max_pages=8)
    json.dumps(report)
    assert report["verdict"]["accepted"] is False
    assert report["verdict"]["error"] == "ModuleFormatError"


# --- fuzzing: every input is admitted or gets a ModuleError ------------------------------


def _seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted(GUESTS.glob("*.wasm")) if p.name != "big.wasm"]
    seeds.append(DEMO_WASM.read_bytes())
    issuer = generate(KeyKind.ACCOUNT)
    seeds.append(sign_module(guest(memory=(1, None)), issuer, "fuzz")[0])
    return seeds


SEEDS = _seeds()
_MODULE_ERRORS = {
    name for name, obj in vars(errors).items()
    if isinstance(obj, type) and issubclass(obj, ModuleError)
}  # fmt: skip


def _third_party_seeds() -> list[bytes]:
    root = Path(os.environ.get("LATTICE_EDGE_FIXTURES", REPO.parent / "shared" / "fixtures"))
    folder = root / "third_party" if (root / "third_party").is_dir() else root
    names = ("hello_zig.wasm", "hello_as.wasm", "hello_tinygo.wasm", "echo_messaging_v0.9.0.wasm")
    return [(folder / n).read_bytes() for n in names if (folder / n).is_file()]


ALL_SEEDS = SEEDS + _third_party_seeds()


@st.composite
def mutated_modules(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(ALL_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "section"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "truncate":
            del data[at:]
        elif action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:  # overwrite a byte in a section header, where sizes and ids live
            try:
                headers = [s.offset for s in iter_sections(bytes(data))]
            except ModuleError:
                headers = [at]
            spot = draw(st.sampled_from(headers or [at])) + draw(st.integers(0, 5))
            if spot < len(data):
                data[spot] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_modules(), allow_unsigned=st.booleans(), pages=st.integers(1, 64))
def test_fuzzed_modules_are_admitted_or_rejected_cleanly(
    data: bytes, allow_unsigned: bool, pages: int
) -> None:
    try:
        result = admit(
            data, trusted_issuers=TRUSTED, allow_unsigned=allow_unsigned, max_pages=pages
        )
    except ModuleError:
        pass  # the expected way to refuse
    else:
        assert isinstance(result, AdmittedModule)
        assert result.memory is None or (result.memory.max_pages or 0) <= pages
    report = inspect_report(
        data, trusted_issuers=TRUSTED, allow_unsigned=allow_unsigned, max_pages=pages
    )
    json.dumps(report)
    assert report["verdict"]["error"] in _MODULE_ERRORS | {None}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_random_bytes_after_a_valid_header(data: bytes) -> None:
    with contextlib.suppress(ModuleError):  # refusing is fine; any other exception is not
        admit(
            b"\x00asm\x01\x00\x00\x00" + data, trusted_issuers=(), allow_unsigned=True, max_pages=4
        )


# --- the committed guests match their sources ----------------------------------------------


@pytest.mark.skipif(shutil.which("wat2wasm") is None, reason="wabt's wat2wasm is not installed")
def test_build_script_reproduces_the_committed_guests() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fixtures" / "build_guests.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_inspect_report_survives_absurd_timestamps() -> None:
    issuer = generate(KeyKind.ACCOUNT)
    signed, _ = sign_module(guest(), issuer, "far", expires_in_days=10**12, now=10**15)
    report = inspect_report(
        signed, trusted_issuers={issuer.public_key}, allow_unsigned=False, max_pages=4
    )
    json.dumps(report)
    assert report["verdict"]["accepted"] is True  # like wascap, iat is informational
    assert report["claims"]["expires_iso"].endswith("seconds after the epoch")
