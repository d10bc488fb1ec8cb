"""agent.runtime.wapc: the in-process waPC host over real wasm3 (as used inside workers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _sandboxkit import guest
from _wasmgen import HEADER, I32, functype, section, vec

from agent.errors import GuestError, ModuleError, ModuleExportError, ModuleImportError, TrapError
from agent.runtime.wapc import MAX_CONSOLE_LINES, WapcInstance


def test_echo_log_and_wasi_output() -> None:
    instance = WapcInstance(guest("hostile"))
    assert instance.take_console() == ("hostile guest ready",)  # from wapc_init
    assert instance.invoke("echo", b"abc") == b"abc"
    assert instance.invoke("echo", b"") == b""
    assert instance.take_console() == ()
    assert instance.invoke("log", "héllo".encode()) == "héllo".encode()
    assert instance.take_console() == ("héllo",)
    written = instance.invoke("write", b"a\nb\npartial")
    assert int.from_bytes(written, "little") == len(b"a\nb\npartial")
    assert instance.take_console() == ("a", "b", "partial")


def test_console_lines_are_bounded() -> None:
    instance = WapcInstance(guest("hostile"))
    instance.take_console()
    for _ in range(MAX_CONSOLE_LINES + 5):
        instance.invoke("log", b"x")
    lines = instance.take_console()
    assert len(lines) == MAX_CONSOLE_LINES + 1
    assert lines[-1] == "[5 more console lines dropped]"


def test_host_calls_succeed_and_fail() -> None:
    seen: list[tuple[str, str, str, bytes]] = []

    def host_call(binding: str, namespace: str, operation: str, payload: bytes) -> bytes:
        seen.append((binding, namespace, operation, payload))
        if payload == b"fail":
            raise LookupError("nothing here")
        return payload.upper()

    instance = WapcInstance(guest("hostile"), host_call=host_call)
    assert instance.invoke("hostcall", b"hi") == b"HI"
    with pytest.raises(GuestError, match=r"^nothing here$"):
        instance.invoke("hostcall", b"fail")
    assert seen == [("b", "ns", "op", b"hi"), ("b", "ns", "op", b"fail")]
    big = b"z" * 300_000  # host response larger than the guest's memory: it must grow
    assert instance.invoke("hostcall", big) == big.upper()


def test_without_a_callback_host_calls_fail() -> None:
    with pytest.raises(GuestError, match="no link exists for ns on binding b"):
        WapcInstance(guest("hostile")).invoke("hostcall", b"")


@pytest.mark.parametrize(
    ("operation", "match"),
    [("unreachable", "unreachable executed"), ("recurse", "stack overflow"), ("x", "proc_exit")],
)
def test_traps_leave_the_instance_usable(operation: str, match: str) -> None:
    instance = WapcInstance(guest("hostile"), stack_bytes=32 * 1024)
    with pytest.raises(TrapError, match=match):
        instance.invoke(operation, b"")
    assert instance.invoke("echo", b"still here") == b"still here"


def test_unknown_operation_is_a_guest_error() -> None:
    with pytest.raises(GuestError, match=r"^unknown operation$"):
        WapcInstance(guest("hostile")).invoke("?", b"")


def test_third_party_wasmbus_module(third_party_dir: Path) -> None:
    wasm = (third_party_dir / "echo_messaging_v0.9.0.wasm").read_bytes()
    instance = WapcInstance(wasm)
    assert instance.invoke("Actor.HealthRequest", b"\x80") == b"\x81\xa7healthy\xc3"


def _module(types: list[bytes], *sections: bytes) -> bytes:
    return HEADER + section(1, vec(types)) + b"".join(sections)


def test_modules_wasm3_rejects() -> None:
    with pytest.raises(ModuleError):
        WapcInstance(b"not wasm at all")
    with pytest.raises(ModuleError):
        WapcInstance(guest("echo")[:-7])
    # No __guest_call export.
    with pytest.raises(ModuleExportError, match="__guest_call"):
        WapcInstance(_module([functype([], [])]))
    # __console_log imported with the wrong signature.
    imports = section(2, vec([b"\x04wapc\x0d__console_log\x00\x00"]))
    with pytest.raises(ModuleImportError, match="__console_log"):
        WapcInstance(_module([functype([I32], [I32])], imports))
