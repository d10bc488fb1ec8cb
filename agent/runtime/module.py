"""Inspect and prepare WebAssembly actor modules before wasm3 sees them. Pure, no I/O.

What the agent needs from a module, and nothing more:

* its sections, checked for magic/version, truncation and sizes that overrun the file;
* imports and exports (with function signatures), memory limits, custom sections;
* the features wasm3 0.5 cannot run (see :mod:`agent.runtime.wasmbin`);
* the wascap module hash — SHA-256 of the module with its ``wasmcloud_jwt``/``jwt``
  sections removed *byte for byte*: other sections are never re-encoded, because signed
  modules such as wascap's echo_messaging fixture use padded LEB128 section sizes and a
  re-encoding would change the hash;
* a copy whose memory maximum is clamped to the profile's page budget, made by rewriting
  only the memory section (wasm3 0.5 would otherwise let a module without a maximum grow
  to 2 GiB).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, replace

from agent.errors import (
    MemoryLimitError,
    ModuleError,
    ModuleExportError,
    ModuleFormatError,
    ModuleImportError,
    UnsupportedFeatureError,
)
from agent.runtime.wasmbin import (
    Reader,
    read_limits,
    read_table_type,
    scan_code,
    scan_const_expr,
    scan_data,
    scan_elements,
    value_type_finding,
)

__all__ = [
    "ALLOWED_IMPORTS",
    "DEFAULT_MAX_MODULE_BYTES",
    "JWT_SECTION_NAMES",
    "MAX_PAGES",
    "RUSTC_FLAGS_HINT",
    "Export",
    "FuncType",
    "Import",
    "MemoryLimits",
    "ModuleInfo",
    "Section",
    "check_exports",
    "check_imports",
    "check_supported",
    "clamp_limits",
    "clamp_memory",
    "custom_sections",
    "iter_sections",
    "module_hash",
    "parse_module",
    "strip_custom_sections",
    "wasm3_error",
]

MAGIC = b"\x00asm"
VERSION_1 = b"\x01\x00\x00\x00"
MAX_PAGES = 65536  # 4 GiB of 64 KiB pages: the wasm32 ceiling
DEFAULT_MAX_MODULE_BYTES = 16 * 1024 * 1024
JWT_SECTION_NAMES = frozenset({"wasmcloud_jwt", "jwt"})

RUSTC_FLAGS_HINT = (
    "rustc >= 1.82 enables reference-types and multivalue for wasm32 by default (and newer "
    'releases add bulk-memory); rebuild the actor with RUSTFLAGS="-C target-cpu=mvp" '
    "(on nightly also pass -Zbuild-std=panic_abort,std, because the precompiled standard "
    "library keeps the default features), or build for the wasm32v1-none target "
    "(rustc >= 1.84, no_std), or use rustc 1.81 or older"
)

SECTION_KINDS = {
    0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
    7: "export", 8: "start", 9: "element", 10: "code", 11: "data", 12: "data count", 13: "tag",
}  # fmt: skip
# the order non-custom sections must appear in (the tag section sits between memory and global)
_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}
_EXTERN_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}
_VALUE_NAMES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
                0x70: "funcref", 0x6F: "externref"}  # fmt: skip

_WAPC_FUNCTIONS = {
    "__host_call": ("i32",) * 8 + ("->", "i32"),
    "__host_response": ("i32", "->"),
    "__host_response_len": ("->", "i32"),
    "__host_error": ("i32", "->"),
    "__host_error_len": ("->", "i32"),
    "__guest_request": ("i32", "i32", "->"),
    "__guest_response": ("i32", "i32", "->"),
    "__guest_error": ("i32", "i32", "->"),
    "__console_log": ("i32", "i32", "->"),
}
_WAPC_MODULES = ("wapc", "wasmbus")
_WASI_MODULES = ("wasi_unstable", "wasi_snapshot_preview1")
_WASI_FUNCTIONS = {"fd_write": ("i32",) * 4 + ("->", "i32"), "proc_exit": ("i32", "->")}


@dataclass(frozen=True, slots=True)
class FuncType:
    """A function signature, value types named as in WAT (``i32``, ``f64`` …)."""

    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"

    @classmethod
    def parse(cls, spec: tuple[str, ...]) -> FuncType:
        """Build from ``("i32", "i32", "->", "i32")``."""
        cut = spec.index("->")
        return cls(spec[:cut], spec[cut + 1 :])


# (module, name) -> the signature the host links it with
ALLOWED_IMPORTS: dict[tuple[str, str], FuncType] = {
    **{(ns, n): FuncType.parse(s) for ns in _WAPC_MODULES for n, s in _WAPC_FUNCTIONS.items()},
    **{(ns, n): FuncType.parse(s) for ns in _WASI_MODULES for n, s in _WASI_FUNCTIONS.items()},
    ("metering", "usegas"): FuncType(("i32",), ()),
}
GUEST_CALL = FuncType(("i32", "i32"), ("i32",))


@dataclass(frozen=True, slots=True)
class Section:
    """Where one section sits: ``offset`` of its id byte, payload from ``payload`` to ``end``."""

    id: int
    offset: int
    payload: int
    end: int
    name: str | None = None  # custom sections only

    @property
    def kind(self) -> str:
        """``"code"``, ``"custom"`` …"""
        return SECTION_KINDS.get(self.id, f"unknown ({self.id})")


@dataclass(frozen=True, slots=True)
class Import:
    """One import; ``signature`` is set for function imports."""

    module: str
    name: str
    kind: str  # func | table | memory | global | tag
    signature: FuncType | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """One export; ``signature`` is set for function exports."""

    name: str
    kind: str
    index: int
    signature: FuncType | None = None


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """Linear memory limits in 64 KiB pages; ``imported`` says the module does not define it."""

    min_pages: int
    max_pages: int | None
    imported: bool = False


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """Everything :func:`parse_module` learned about a module."""

    size: int
    sections: tuple[Section, ...]
    imports: tuple[Import, ...]
    exports: tuple[Export, ...]
    memory: MemoryLimits | None
    start_function: int | None
    function_count: int
    unsupported: tuple[str, ...]  # why wasm3 0.5 cannot run it; empty when it can

    @property
    def custom_section_names(self) -> tuple[str, ...]:
        """Names of the custom sections, in file order."""
        return tuple(s.name for s in self.sections if s.name is not None)

    def export(self, name: str) -> Export | None:
        """The export called ``name``, if any."""
        return next((e for e in self.exports if e.name == name), None)


# --- sections ------------------------------------------------------------------------


def iter_sections(data: bytes, *, max_size: int = DEFAULT_MAX_MODULE_BYTES) -> tuple[Section, ...]:
    """Check the header and split ``data`` into sections, without decoding their contents."""
    if len(data) > max_size:
        raise ModuleFormatError(f"module is {len(data)} bytes, over the {max_size}-byte limit")
    if len(data) < 8:
        raise ModuleFormatError(f"{len(data)} bytes is too short for a WebAssembly module")
    if data[:4] != MAGIC:
        # Never echo the bytes: the module may be any file a caller pointed us at.
        raise ModuleFormatError(
            "not a WebAssembly module: it does not start with the magic 00 61 73 6d ('\\0asm')"
        )
    if data[4:8] != VERSION_1:
        if data[6:8] == b"\x01\x00":
            raise ModuleFormatError(
                "this is a WebAssembly component (component model), not a core module; "
                "wasmCloud 0.x actors are core waPC modules"
            )
        raise ModuleFormatError("unsupported WebAssembly binary version (expected 1)")
    sections: list[Section] = []
    r = Reader(data, 8, len(data), "section header")
    last_rank = 0
    while not r.at_end():
        offset = r.pos
        section_id = r.byte()
        size = r.u32()
        kind = SECTION_KINDS.get(section_id, str(section_id))
        remaining = len(data) - r.pos
        if size > remaining:
            raise ModuleFormatError(
                f"{kind} section at offset {offset} declares {size} bytes but only {remaining} "
                "remain: the module is truncated or the size is corrupt"
            )
        payload, end = r.pos, r.pos + size
        name = None
        if section_id == 0:
            name = Reader(data, payload, end, f"custom section at offset {offset}").name()
        elif section_id not in _ORDER:
            raise ModuleFormatError(f"unknown section id {section_id} at offset {offset}")
        elif _ORDER[section_id] <= last_rank:
            raise ModuleFormatError(
                f"{kind} section at offset {offset} is duplicated or out of order"
            )
        else:
            last_rank = _ORDER[section_id]
        sections.append(Section(section_id, offset, payload, end, name))
        r.pos = end
    return tuple(sections)


def custom_sections(data: bytes, name: str) -> tuple[bytes, ...]:
    """The contents (after the name) of every custom section called ``name``, in file order."""
    out = []
    for s in iter_sections(data):
        if s.name == name:
            r = Reader(data, s.payload, s.end, "custom section")
            r.name()
            out.append(data[r.pos : s.end])
    return tuple(out)


def strip_custom_sections(data: bytes, names: Collection[str] = JWT_SECTION_NAMES) -> bytes:
    """``data`` without the custom sections named in ``names``; every other byte verbatim."""
    sections = iter_sections(data)
    kept = [data[:8]]
    kept.extend(data[s.offset : s.end] for s in sections if s.name is None or s.name not in names)
    return b"".join(kept)


def module_hash(data: bytes) -> str:
    """wascap's module hash: upper-case hex SHA-256 of ``data`` without its JWT sections."""
    return hashlib.sha256(strip_custom_sections(data)).hexdigest().upper()


# --- decoding ------------------------------------------------------------------------


def _value_type(r: Reader, findings: dict[str, str], where: str) -> str:
    code = r.byte()
    finding = value_type_finding(code)
    if finding:
        findings.setdefault(finding, where)
    return _VALUE_NAMES.get(code, f"0x{code:02X}")


def _types(r: Reader, findings: dict[str, str]) -> list[FuncType]:
    types: list[FuncType] = []
    for index in range(r.u32()):
        form = r.byte()
        if form != 0x60:
            findings.setdefault(f"gc/function-references: type form 0x{form:02X}", "type section")
            r.pos = r.end  # undecodable from here on
            return types
        where = f"type {index}"
        params = tuple(_value_type(r, findings, where) for _ in range(r.u32()))
        results = tuple(_value_type(r, findings, where) for _ in range(r.u32()))
        types.append(FuncType(params, results))
    return types


def _signature(types: list[FuncType], index: int, r: Reader) -> FuncType:
    if index >= len(types):
        raise r.fail(f"type index {index} is out of range ({len(types)} types)")
    return types[index]


def parse_module(data: bytes, *, max_size: int = DEFAULT_MAX_MODULE_BYTES) -> ModuleInfo:
    """Decode a module's structure and scan its code; raises ModuleFormatError when malformed.

    Features wasm3 0.5 cannot run are collected in ``ModuleInfo.unsupported`` rather than
    raised, so an inspector can show them next to everything else.
    """
    data = bytes(data)
    sections = iter_sections(data, max_size=max_size)
    findings: dict[str, str] = {}  # finding -> where it was first seen
    types: list[FuncType] = []
    imports: list[Import] = []
    func_types: list[FuncType] = []  # imported functions first, as wasm numbers them
    exports: list[Export] = []
    memory: MemoryLimits | None = None
    start: int | None = None
    declared: list[int] = []
    data_count: int | None = None
    code_count: int | None = None
    for s in sections:
        if s.id == 0:
            continue
        r = Reader(data, s.payload, s.end, f"{s.kind} section")
        if s.id == 1:
            types = _types(r, findings)
        elif s.id == 2:
            for _ in range(r.u32()):
                module, name, kind_byte = r.name(), r.name(), r.byte()
                kind = _EXTERN_KINDS.get(kind_byte)
                sig = None
                if kind == "func":
                    sig = _signature(types, r.u32(), r)
                    func_types.append(sig)
                elif kind == "table":
                    read_table_type(r, findings, f"table import {module}.{name}")
                elif kind == "memory":
                    lo, hi = read_limits(r, findings, f"memory import {module}.{name}")
                    if memory is not None:
                        findings.setdefault("multi-memory: more than one memory", "imports")
                    memory = MemoryLimits(lo, hi, imported=True)
                elif kind == "global":
                    _value_type(r, findings, f"global import {module}.{name}")
                    r.byte()
                elif kind == "tag":
                    findings.setdefault("exception-handling: tag import", f"{module}.{name}")
                    r.byte()
                    r.u32()
                else:
                    raise r.fail(f"import {module}.{name} has unknown kind {kind_byte}")
                imports.append(Import(module, name, kind or "?", sig))
        elif s.id == 3:
            declared = [r.u32() for _ in range(r.u32())]
            func_types.extend(_signature(types, t, r) for t in declared)
        elif s.id == 4:
            for _ in range(r.u32()):
                read_table_type(r, findings, "table section")
        elif s.id == 5:
            for _ in range(r.u32()):
                lo, hi = read_limits(r, findings, "memory section")
                if memory is not None:
                    findings.setdefault("multi-memory: more than one memory", "memory section")
                memory = MemoryLimits(lo, hi)
        elif s.id == 6:
            for index in range(r.u32()):
                _value_type(r, findings, f"global {index}")
                r.byte()
                finding = scan_const_expr(r)
                if finding:
                    findings.setdefault(finding, f"global {index}")
                    r.pos = r.end
                    break
        elif s.id == 7:
            for _ in range(r.u32()):
                name, kind_byte, index = r.name(), r.byte(), r.u32()
                kind = _EXTERN_KINDS.get(kind_byte)
                if kind is None:
                    raise r.fail(f"export {name!r} has unknown kind {kind_byte}")
                sig = None
                if kind == "func":
                    if index >= len(func_types):
                        raise r.fail(f"export {name!r} names function {index}, which is missing")
                    sig = func_types[index]
                exports.append(Export(name, kind, index, sig))
        elif s.id == 8:
            start = r.u32()
        elif s.id == 9:
            scan_elements(r, findings)
        elif s.id == 10:
            code_count = scan_code(data, r, findings, len(func_types) - len(declared))
        elif s.id == 11:
            count = scan_data(r, findings)
            if data_count is not None and count is not None and count != data_count:
                raise r.fail(f"{count} data segments but the data count section says {data_count}")
        elif s.id == 12:
            data_count = r.u32()
        elif s.id == 13:
            findings.setdefault("exception-handling: tag section", "tag section")
            r.pos = r.end
        if r.pos != r.end:
            raise r.fail(f"{r.end - r.pos} unexpected bytes at the end of the section")
    if (code_count or 0) != len(declared):
        raise ModuleFormatError(
            f"the function section declares {len(declared)} functions but the code section "
            f"has {code_count or 0} bodies"
        )
    return ModuleInfo(
        size=len(data),
        sections=sections,
        imports=tuple(imports),
        exports=tuple(exports),
        memory=memory,
        start_function=start,
        function_count=len(declared),
        unsupported=tuple(f"{what} ({where})" for what, where in findings.items()),
    )


# --- admission checks --------------------------------------------------------------


def check_supported(info: ModuleInfo) -> None:
    """Raise UnsupportedFeatureError when the module uses features wasm3 0.5 cannot run."""
    if info.unsupported:
        raise UnsupportedFeatureError(
            "the module uses WebAssembly features wasm3 0.5 cannot run: "
            f"{'; '.join(info.unsupported)}. {RUSTC_FLAGS_HINT}"
        )


def check_imports(info: ModuleInfo) -> None:
    """Raise ModuleImportError naming every import the host will not provide."""
    problems = []
    for imp in info.imports:
        expected = ALLOWED_IMPORTS.get((imp.module, imp.name))
        if imp.kind != "func" or expected is None:
            problems.append(f"{imp.module}.{imp.name} ({imp.kind}) is not provided by the host")
        elif imp.signature != expected:
            problems.append(
                f"{imp.module}.{imp.name} has signature {imp.signature}, the host provides "
                f"{expected}"
            )
    if problems:
        raise ModuleImportError(
            f"unsupported import{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}. "
            "Allowed: the nine waPC functions under 'wapc' or 'wasmbus', fd_write and "
            "proc_exit under 'wasi_unstable'/'wasi_snapshot_preview1', and metering.usegas"
        )


def check_exports(info: ModuleInfo) -> None:
    """Raise ModuleExportError unless the module exports waPC's ``__guest_call``."""
    export = info.export("__guest_call")
    if export is None or export.kind != "func":
        raise ModuleExportError(
            "the module does not export the function __guest_call: not a waPC actor"
        )
    if export.signature != GUEST_CALL:
        raise ModuleExportError(
            f"__guest_call has signature {export.signature}, expected {GUEST_CALL}"
        )


# --- memory clamping -------------------------------------------------------------------


def clamp_limits(limits: MemoryLimits, max_pages: int) -> MemoryLimits:
    """The limits a module gets under a ``max_pages`` budget; MemoryLimitError if it can't fit."""
    if not 1 <= max_pages <= MAX_PAGES:
        raise ValueError(f"a page budget must be between 1 and {MAX_PAGES}, not {max_pages}")
    if limits.min_pages > max_pages:
        raise MemoryLimitError(
            f"the module needs at least {limits.min_pages} pages of memory "
            f"({limits.min_pages * 64} KiB) but the budget is {max_pages} pages "
            f"({max_pages * 64} KiB)"
        )
    top = max_pages if limits.max_pages is None else min(limits.max_pages, max_pages)
    return replace(limits, max_pages=top)


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def clamp_memory(data: bytes, max_pages: int, *, info: ModuleInfo | None = None) -> bytes:
    """``data`` with its memory maximum lowered to ``max_pages`` (or set, when it had none).

    Only the memory section is rewritten; every other byte is kept. A module without memory
    is returned unchanged. An imported memory cannot be bounded here and waPC hosts do not
    provide one, so it raises ModuleImportError; a minimum above the budget raises
    MemoryLimitError. Pass ``info`` when the module was already parsed.
    """
    info = parse_module(data) if info is None else info
    memory = info.memory
    if memory is None:
        return data
    if memory.imported:
        imported = next(f"{i.module}.{i.name}" for i in info.imports if i.kind == "memory")
        raise ModuleImportError(
            f"the module imports its linear memory ({imported}); waPC hosts do not provide "
            "one, so it can be neither bounded nor run"
        )
    section = next(s for s in info.sections if s.id == 5)
    r = Reader(data, section.payload, section.end, "memory section")
    findings: dict[str, str] = {}
    count = r.u32()
    read_limits(r, findings, "memory section")
    if count != 1 or findings:
        raise UnsupportedFeatureError(
            "only one plain 32-bit, non-shared memory can be bounded and run by wasm3 0.5"
        )
    new = clamp_limits(memory, max_pages)
    if new.max_pages == memory.max_pages:
        return data
    payload = b"\x01\x01" + _leb(new.min_pages) + _leb(new.max_pages or max_pages)
    head, tail = data[: section.offset], data[section.end :]
    return b"".join((head, b"\x05", _leb(len(payload)), payload, tail))


# --- wasm3 errors ----------------------------------------------------------------------

_WASM3_UNSUPPORTED = (
    "restricted opcode",
    "unknown value_type",
    "unknown opcode",
    "no operation found for opcode",
    "element table index must be zero",
)


def wasm3_error(message: str | BaseException) -> ModuleError:
    """Turn a wasm3 parse/load ``RuntimeError`` message into the matching ModuleError.

    The worker raises the result ``from`` the original. "LEB encoded value overflow" is
    what wasm3 0.5 says about the overlong ``call_indirect`` encoding of rustc >= 1.82.
    """
    text = str(message)
    if "LEB encoded value overflow" in text:
        return UnsupportedFeatureError(
            f"wasm3 could not parse the module ({text}): it was most likely built by "
            f"rustc >= 1.82 with default target features. {RUSTC_FLAGS_HINT}"
        )
    if any(marker in text for marker in _WASM3_UNSUPPORTED):
        return UnsupportedFeatureError(
            f"wasm3 0.5 does not support an instruction or type in the module ({text}). "
            f"{RUSTC_FLAGS_HINT}"
        )
    return ModuleFormatError(f"wasm3 rejected the module: {text}")
