"""Low-level WebAssembly binary reading: a bounds-checked LEB128 reader and a code scanner.

Pure functions over ``bytes``; no I/O. :mod:`agent.runtime.module` builds on these to
describe a whole module. Every malformed input ends in
:class:`~agent.errors.ModuleFormatError`, never ``IndexError`` or ``ValueError``, because
the admission path promises callers that bad bytes only ever produce a ``ModuleError``.

The code scanner decodes every instruction of a function body (MVP plus the proposals
LLVM emits) only to find encodings that wasm3 0.5 cannot run. What it flags was measured
against pywasm3 0.5.0, not taken from wasm3's feature list:

* parses and runs: sign-extension ops, saturating float-to-int (``0xFC 0..7``),
  ``memory.copy``/``memory.fill`` (``0xFC 10/11``), multi-value blocks and functions, a
  data-count section, several tables;
* fails: ``call_indirect`` whose table index is not the single byte ``0x00`` ("LEB encoded
  value overflow" — rustc >= 1.82 writes it as a 5-byte LEB because ``reference-types``
  became a default target feature), ``ref.*``, typed ``select``, table instructions,
  ``funcref``/``externref`` value types, ``memory.init``/``data.drop`` and passive data
  or element segments ("restricted opcode", "unknown value_type", "unknown opcode").
"""

from __future__ import annotations

from collections.abc import Callable

from agent.errors import ModuleFormatError

__all__ = [
    "Reader",
    "read_limits",
    "read_table_type",
    "scan_body",
    "scan_code",
    "scan_const_expr",
    "scan_data",
    "scan_elements",
    "value_type_finding",
]

# value types wasm3 0.5 understands: i32, i64, f32, f64
NUMERIC_TYPES = frozenset({0x7F, 0x7E, 0x7D, 0x7C})
REFERENCE_TYPES = frozenset({0x70, 0x6F})
V128 = 0x7B
# 0xFC sub-opcodes wasm3 0.5 runs: the saturating truncations, memory.copy, memory.fill
_FC_SUPPORTED = frozenset(range(8)) | {10, 11}
_FC_BULK_MEMORY = frozenset({8, 9})


class Reader:
    """A cursor over ``data[pos:end]`` whose reads fail with ModuleFormatError at the end."""

    __slots__ = ("data", "end", "pos", "where")

    def __init__(self, data: bytes, pos: int, end: int, where: str) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.where = where

    def fail(self, message: str) -> ModuleFormatError:
        """An error naming what is being read and the offset it went wrong at."""
        return ModuleFormatError(f"{self.where}: {message} (at byte offset {self.pos})")

    def at_end(self) -> bool:
        """True when nothing is left to read."""
        return self.pos >= self.end

    def byte(self) -> int:
        """One raw byte."""
        if self.pos >= self.end:
            raise self.fail("truncated: ends in the middle of a value")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def bytes(self, count: int) -> bytes:
        """``count`` raw bytes."""
        if count < 0 or self.pos + count > self.end:
            raise self.fail(f"truncated: needs {count} bytes, {self.end - self.pos} remain")
        start = self.pos
        self.pos += count
        return self.data[start : self.pos]

    def u32(self) -> int:
        """An unsigned LEB128 of at most 5 bytes (padded encodings are legal)."""
        data, pos = self.data, self.pos
        if pos < self.end and data[pos] < 0x80:  # the common one-byte case, fast
            self.pos = pos + 1
            return data[pos]
        result = shift = 0
        for _ in range(5):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                if result > 0xFFFFFFFF:
                    raise self.fail("LEB128 value does not fit in 32 bits")
                return result
            shift += 7
        raise self.fail("LEB128 value is longer than 5 bytes")

    def u64(self) -> int:
        """An unsigned LEB128 of at most 10 bytes (memory64 limits)."""
        result = shift = 0
        for _ in range(10):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
        raise self.fail("LEB128 value is longer than 10 bytes")

    def sleb(self, max_bytes: int) -> int:
        """A signed LEB128 of at most ``max_bytes`` bytes (5 for i32, 10 for i64)."""
        result = shift = 0
        for _ in range(max_bytes):
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result
        raise self.fail(f"signed LEB128 value is longer than {max_bytes} bytes")

    def name(self) -> str:
        """A length-prefixed UTF-8 name."""
        raw = self.bytes(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a name is not valid UTF-8") from None

    def skip(self, count: int) -> None:
        """Advance ``count`` bytes."""
        self.bytes(count)


# --- instruction decoding ----------------------------------------------------------
#
# Each handler reads the immediates of one opcode and returns a finding (a short
# description of an unsupported feature) or None. After a finding the rest of the body is
# skipped: its encoding may be one we cannot decode.

Handler = Callable[[Reader], "str | None"]


def _none(_: Reader) -> str | None:
    return None


def _u32(r: Reader) -> str | None:
    r.u32()
    return None


def _block_type(r: Reader) -> str | None:
    first = r.data[r.pos] if r.pos < r.end else -1
    if first == 0x40 or first in NUMERIC_TYPES:
        r.pos += 1
        return None
    if first in REFERENCE_TYPES:
        return "reference-types: a block typed with a reference type"
    if first == V128:
        return "simd128: a block typed v128"
    if r.sleb(5) < 0:  # s33 type index (multi-value): wasm3 0.5 handles these
        raise r.fail("invalid block type")
    return None


def _br_table(r: Reader) -> str | None:
    for _ in range(r.u32() + 1):
        r.u32()
    return None


def _call_indirect(r: Reader) -> str | None:
    r.u32()
    if r.byte() != 0x00:
        return (
            "reference-types: call_indirect with a table index that is not the single byte "
            "0x00 (the overlong encoding rustc >= 1.82 emits by default)"
        )
    return None


def _memarg(r: Reader) -> str | None:
    if r.u32() & 0x40:
        return "multi-memory: a load or store names a memory index"
    r.u32()
    return None


def _memory_zero(r: Reader) -> str | None:
    if r.byte() != 0x00:
        return "multi-memory: memory.size/memory.grow names another memory"
    return None


def _i32_const(r: Reader) -> str | None:
    r.sleb(5)
    return None


def _i64_const(r: Reader) -> str | None:
    r.sleb(10)
    return None


def _fixed(count: int) -> Handler:
    def read(r: Reader) -> str | None:
        r.skip(count)
        return None

    return read


def _unsupported(feature: str) -> Handler:
    def read(_: Reader) -> str | None:
        return feature

    return read


def _prefix_fc(r: Reader) -> str | None:
    sub = r.u32()
    if sub in _FC_SUPPORTED:
        if sub == 10:
            r.skip(2)
        elif sub == 11:
            r.skip(1)
        return None
    if sub in _FC_BULK_MEMORY:
        return "bulk-memory: memory.init/data.drop"
    if 12 <= sub <= 17:
        return "reference-types: table instructions (table.init/copy/grow/size/fill)"
    return f"unknown instruction 0xFC {sub}"


def _build_table() -> list[Handler]:
    table: list[Handler] = [_unsupported(f"unknown opcode 0x{op:02X}") for op in range(256)]
    for op in (0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B):
        table[op] = _none
    for op in (0x02, 0x03, 0x04):
        table[op] = _block_type
    for op in (0x0C, 0x0D, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24):
        table[op] = _u32
    table[0x0E] = _br_table
    table[0x11] = _call_indirect
    for op in range(0x28, 0x3F):
        table[op] = _memarg
    table[0x3F] = table[0x40] = _memory_zero
    table[0x41] = _i32_const
    table[0x42] = _i64_const
    table[0x43] = _fixed(4)
    table[0x44] = _fixed(8)
    for op in range(0x45, 0xC5):  # numeric ops, sign-extension (0xC0-0xC4) included
        table[op] = _none
    for op in (0x06, 0x07, 0x08, 0x09, 0x0A, 0x18, 0x19, 0x1F):
        table[op] = _unsupported("exception-handling: try/catch/throw")
    for op in (0x12, 0x13, 0x14, 0x15):
        table[op] = _unsupported("tail-call / function-references: return_call or call_ref")
    table[0x1C] = _unsupported("reference-types: typed select")
    for op in (0x25, 0x26):
        table[op] = _unsupported("reference-types: table.get/table.set")
    for op in (0xD0, 0xD1, 0xD2):
        table[op] = _unsupported("reference-types: ref.null/ref.is_null/ref.func")
    table[0xFC] = _prefix_fc
    table[0xFD] = _unsupported("simd128: vector instructions")
    table[0xFE] = _unsupported("threads: atomic instructions")
    return table


_HANDLERS = _build_table()


def value_type_finding(code: int) -> str | None:
    """Why wasm3 0.5 cannot take value type ``code``, or None when it can."""
    if code in NUMERIC_TYPES:
        return None
    if code in REFERENCE_TYPES:
        return "reference-types: funcref/externref values"
    if code == V128:
        return "simd128: v128 values"
    return f"unknown value type 0x{code:02X}"


def scan_body(r: Reader) -> str | None:
    """Decode one function body's locals and code up to ``r.end``; the first finding or None.

    Structural damage (truncation, bad LEB128) raises ModuleFormatError. Locals must be
    checked here too: a ``funcref`` local is what wasm3 reports as "unknown value_type".
    """
    total_locals = 0
    for _ in range(r.u32()):
        count = r.u32()
        total_locals += count
        if total_locals > 50_000:  # the limit engines use; wasm3 would allocate them all
            raise r.fail("declares more than 50000 locals")
        finding = value_type_finding(r.byte())
        if finding:
            return finding
    handlers, data, end = _HANDLERS, r.data, r.end
    op = -1
    while r.pos < end:
        op = data[r.pos]
        r.pos += 1
        finding = handlers[op](r)
        if finding:
            return finding
    if op != 0x0B:
        raise r.fail("function body does not end with 'end'")
    return None


def scan_const_expr(r: Reader) -> str | None:
    """Decode a constant expression (global init, segment offset) through its ``end``."""
    while True:
        op = r.byte()
        if op == 0x0B:
            return None
        finding = _HANDLERS[op](r)
        if finding:
            return finding


# --- section bodies --------------------------------------------------------------


def read_limits(r: Reader, findings: dict[str, str], where: str) -> tuple[int, int | None]:
    """Read limits (flags, min, max?); shared and 64-bit memories are recorded as findings."""
    flags = r.byte()
    if flags > 0x07:
        raise r.fail(f"invalid limits flags 0x{flags:02X}")
    if flags & 0x02:
        findings.setdefault("threads: shared memory", where)
    if flags & 0x04:
        findings.setdefault("memory64: 64-bit memory", where)
        return r.u64(), (r.u64() if flags & 1 else None)
    minimum = r.u32()
    maximum = r.u32() if flags & 1 else None
    if maximum is not None and maximum < minimum:
        raise r.fail(f"memory maximum {maximum} is below its minimum {minimum}")
    return minimum, maximum


def read_table_type(r: Reader, findings: dict[str, str], where: str) -> None:
    """Read a table type (element type and limits)."""
    # funcref and externref tables both load in wasm3 0.5 (measured); only their use fails
    if r.byte() not in (0x70, 0x6F):
        raise r.fail("a table's element type must be funcref or externref")
    read_limits(r, findings, where)


def scan_elements(r: Reader, findings: dict[str, str]) -> None:
    """Decode the element section; segments other than MVP active ones are findings."""
    for index in range(r.u32()):
        flags = r.u32()
        if flags != 0:
            findings.setdefault(
                f"reference-types/bulk-memory: element segment kind {flags}", f"element {index}"
            )
            r.pos = r.end
            return
        finding = scan_const_expr(r)
        if finding:
            findings.setdefault(finding, f"element {index}")
            r.pos = r.end
            return
        for _ in range(r.u32()):
            r.u32()


def scan_data(r: Reader, findings: dict[str, str]) -> int | None:
    """Decode the data section; its segment count, or None after a finding stopped decoding."""
    count = r.u32()
    for index in range(count):
        flags = r.u32()
        if flags != 0:
            kind = "passive data segment" if flags == 1 else f"data segment kind {flags}"
            findings.setdefault(f"bulk-memory: {kind}", f"data segment {index}")
            r.pos = r.end
            return None
        finding = scan_const_expr(r)
        if finding:
            findings.setdefault(finding, f"data segment {index}")
            r.pos = r.end
            return None
        r.skip(r.u32())
    return count


def scan_code(data: bytes, r: Reader, findings: dict[str, str], first_index: int) -> int:
    """Decode every function body of the code section; returns the number of bodies."""
    count = r.u32()
    for n in range(count):
        size = r.u32()
        if size > r.end - r.pos:
            raise r.fail(f"body of function {first_index + n} overruns the code section")
        body = Reader(data, r.pos, r.pos + size, f"code of function {first_index + n}")
        finding = scan_body(body)
        if finding:
            findings.setdefault(finding, f"function {first_index + n}")
        r.pos += size
    return count
