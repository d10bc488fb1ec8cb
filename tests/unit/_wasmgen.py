"""Tiny hand-assembler for test modules: build exactly the bytes a test needs, no wabt."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

GUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "guests"
DEMO_WASM = Path(__file__).resolve().parents[2] / "agent" / "runtime" / "demo" / "echo.wasm"
HEADER = b"\x00asm\x01\x00\x00\x00"
I32 = 0x7F
FUNCREF = 0x70


def leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def vec(items: Iterable[bytes]) -> bytes:
    items = list(items)
    return leb(len(items)) + b"".join(items)


def name(text: str) -> bytes:
    return leb(len(text.encode())) + text.encode()


def section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + leb(len(body)) + body


def custom(section_name: str, payload: bytes) -> bytes:
    return section(0, name(section_name) + payload)


def functype(params: Iterable[int], results: Iterable[int]) -> bytes:
    return b"\x60" + vec(bytes([p]) for p in params) + vec(bytes([r]) for r in results)


def limits(minimum: int, maximum: int | None) -> bytes:
    if maximum is None:
        return b"\x00" + leb(minimum)
    return b"\x01" + leb(minimum) + leb(maximum)


def func_import(module: str, field: str, type_index: int) -> bytes:
    return name(module) + name(field) + b"\x00" + leb(type_index)


def memory_import(module: str, field: str, minimum: int, maximum: int | None) -> bytes:
    return name(module) + name(field) + b"\x02" + limits(minimum, maximum)


def module(*sections: bytes) -> bytes:
    return HEADER + b"".join(sections)


def guest(
    *,
    funcs: Iterable[tuple[str, str, int]] = (("wapc", "__guest_request", 1),),
    memory_from: tuple[str, str] | None = None,
    memory: tuple[int, int | None] | None = (1, 2),
    export_guest_call: bool = True,
    body: bytes = b"\x00\x41\x01\x0b",  # no locals; i32.const 1; end
) -> bytes:
    """A minimal waPC-shaped module; types: 0 = (i32,i32)->i32, 1 = (i32,i32)->(), 2 = ()->i32.

    ``funcs`` are function imports (module, name, type index); with ``memory_from`` the
    memory is imported under that name instead of defined.
    """
    funcs = list(funcs)
    types = [functype([I32, I32], [I32]), functype([I32, I32], []), functype([], [I32])]
    imports = [func_import(m, f, t) for m, f, t in funcs]
    if memory_from is not None and memory is not None:
        imports.append(memory_import(*memory_from, *memory))
    parts = [section(1, vec(types))]
    if imports:
        parts.append(section(2, vec(imports)))
    parts.append(section(3, vec([leb(0)])))
    if memory is not None and memory_from is None:
        parts.append(section(5, vec([limits(*memory)])))
    if export_guest_call:
        parts.append(section(7, vec([name("__guest_call") + b"\x00" + leb(len(funcs))])))
    parts.append(section(10, vec([leb(len(body)) + body])))
    return module(*parts)


def overlong_call_indirect() -> bytes:
    """What rustc >= 1.82 emits: ``call_indirect`` with its table index as a 5-byte LEB."""
    body0 = b"\x00\x41\x07\x0b"
    body1 = b"\x00\x41\x00\x11\x00\x80\x80\x80\x80\x00\x0b"
    return module(
        section(1, vec([functype([], [I32])])),
        section(3, vec([leb(0), leb(0)])),
        section(4, vec([bytes([FUNCREF]) + limits(1, None)])),
        section(7, vec([name("f") + b"\x00" + leb(1)])),
        section(9, vec([leb(0) + b"\x41\x00\x0b" + vec([leb(0)])])),
        section(10, vec([leb(len(body0)) + body0, leb(len(body1)) + body1])),
    )
