"""agent.runtime.module: parsing, hashing, stripping, clamping and feature checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import wasm3
from _wasmgen import (
    GUESTS,
    custom,
    func_import,
    functype,
    guest,
    leb,
    module,
    name,
    overlong_call_indirect,
    section,
    vec,
)

from agent.errors import (
    MemoryLimitError,
    ModuleError,
    ModuleExportError,
    ModuleFormatError,
    ModuleImportError,
    UnsupportedFeatureError,
)
from agent.runtime.module import (
    MemoryLimits,
    check_exports,
    check_imports,
    check_supported,
    clamp_limits,
    clamp_memory,
    custom_sections,
    iter_sections,
    module_hash,
    parse_module,
    strip_custom_sections,
    wasm3_error,
)

THIRD_PARTY = [
    "hello_zig.wasm",
    "hello_as.wasm",
    "hello_tinygo.wasm",
    "wasm_basic.wasm",
    "echo_messaging_v0.9.0.wasm",
    "logger.wasm",
]
# from the fixtures README: uppercase SHA-256 of the module without its JWT section
ECHO_HASH = "0A116480EF09116D59E441A125EF472E362B6F2AE0938E4D33A964C349BE13C7"
LOGGER_HASH = "7941152C0674229576BBF50D880DF71C0A579FEF9ECEDC5069AC1009D33E81F1"


def read(folder: Path, file: str) -> bytes:
    path = folder / file
    if not path.is_file():
        pytest.skip(f"{file} is not in {folder}")
    return path.read_bytes()


# --- real modules ------------------------------------------------------------------


@pytest.mark.parametrize("file", THIRD_PARTY)
def test_third_party_fixture_parses_and_passes_static_checks(
    third_party_dir: Path, file: str
) -> None:
    data = read(third_party_dir, file)
    info = parse_module(data)
    assert info.size == len(data)
    assert info.unsupported == ()
    assert info.memory is not None and not info.memory.imported
    check_imports(info)
    check_exports(info)
    assert {i.module for i in info.imports} <= {"wapc", "wasmbus", "wasi_unstable"}


def test_echo_messaging_shape(third_party_dir: Path) -> None:
    info = parse_module(read(third_party_dir, "echo_messaging_v0.9.0.wasm"))
    assert {i.module for i in info.imports} == {"wasmbus"}
    assert len(info.imports) == 8
    assert "__console_log" not in {i.name for i in info.imports}
    assert {"__guest_call", "__wasmbus_rpc_version"} <= {e.name for e in info.exports}
    assert info.custom_section_names[-1] == "wasmcloud_jwt"


def test_tinygo_imports_wasi_fd_write(third_party_dir: Path) -> None:
    info = parse_module(read(third_party_dir, "hello_tinygo.wasm"))
    assert ("wasi_unstable", "fd_write", "func") in {
        (i.module, i.name, i.kind) for i in info.imports
    }


@pytest.mark.parametrize(("file", "expected"), [
    ("echo_messaging_v0.9.0.wasm", ECHO_HASH),
    ("logger.wasm", LOGGER_HASH),
])  # fmt: skip
def test_module_hash_reproduces_wascap(third_party_dir: Path, file: str, expected: str) -> None:
    assert module_hash(read(third_party_dir, file)) == expected


def test_module_hash_of_unsigned_module_is_its_sha256(third_party_dir: Path) -> None:
    data = read(third_party_dir, "hello_zig.wasm")
    assert module_hash(data) == hashlib.sha256(data).hexdigest().upper()


def test_strip_keeps_every_other_byte_verbatim(third_party_dir: Path) -> None:
    data = read(third_party_dir, "echo_messaging_v0.9.0.wasm")
    jwt_section = next(s for s in iter_sections(data) if s.name == "wasmcloud_jwt")
    stripped = strip_custom_sections(data)
    assert stripped == data[: jwt_section.offset] + data[jwt_section.end :]
    # a re-encoding parser would have shrunk padded section sizes; wascap's hash needs them
    assert strip_custom_sections(stripped) == stripped


def test_custom_sections_by_name(third_party_dir: Path) -> None:
    data = read(third_party_dir, "logger.wasm")
    (token,) = custom_sections(data, "jwt")
    assert token.startswith(b"eyJ")
    assert custom_sections(data, "wasmcloud_jwt") == ()


# --- malformed binaries: each gets its own message -------------------------------------


def test_bad_magic_never_echoes_the_bytes() -> None:
    # /etc/shadow starts with "root": an error broadcast to the lattice must not say so.
    with pytest.raises(ModuleFormatError, match="magic") as caught:
        parse_module(b"root:$6$secret\n")
    assert "72 6f 6f 74" not in str(caught.value) and "root" not in str(caught.value)


def test_bad_version() -> None:
    with pytest.raises(ModuleFormatError, match="version") as caught:
        parse_module(b"\x00asm\x02\x00\x00\x00")
    assert "2" not in str(caught.value).replace("expected 1", "")


def test_component_is_named() -> None:
    with pytest.raises(ModuleFormatError, match="component"):
        parse_module(b"\x00asm\x0d\x00\x01\x00")


def test_too_short() -> None:
    with pytest.raises(ModuleFormatError, match="too short"):
        parse_module(b"\x00asm")


def test_truncated_module() -> None:
    data = guest()
    with pytest.raises(ModuleFormatError, match="truncated"):
        parse_module(data[:-3])


def test_section_size_beyond_remaining_bytes() -> None:
    data = module(section(1, vec([functype([], [])]))) + b"\x0a\x7f\x01"
    with pytest.raises(ModuleFormatError, match=r"declares 127 bytes but only 1 remain"):
        parse_module(data)


def test_size_cap() -> None:
    with pytest.raises(ModuleFormatError, match="over the 16-byte limit"):
        parse_module(guest(), max_size=16)


def test_unknown_section_and_order() -> None:
    with pytest.raises(ModuleFormatError, match="unknown section id 42"):
        parse_module(module(section(42, b"")))
    with pytest.raises(ModuleFormatError, match="out of order"):
        parse_module(module(section(3, vec([])), section(1, vec([]))))


def test_function_and_code_counts_must_agree() -> None:
    data = module(section(1, vec([functype([], [])])), section(3, vec([leb(0)])))
    with pytest.raises(ModuleFormatError, match="1 functions but the code section has 0"):
        parse_module(data)


def test_trailing_bytes_in_a_section() -> None:
    with pytest.raises(ModuleFormatError, match="unexpected bytes"):
        parse_module(module(section(1, vec([]) + b"\x00")))


# --- imports and exports -----------------------------------------------------------


def test_disallowed_function_import_is_named() -> None:
    info = parse_module(guest(funcs=[("wapc", "__guest_request", 1), ("env", "abort", 1)]))
    with pytest.raises(ModuleImportError, match=r"env\.abort \(func\) is not provided"):
        check_imports(info)


def test_wrong_signature_for_a_wapc_import() -> None:
    info = parse_module(guest(funcs=[("wapc", "__guest_request", 0)]))
    with pytest.raises(ModuleImportError, match=r"wapc\.__guest_request has signature"):
        check_imports(info)


def test_wasi_beyond_fd_write_and_proc_exit_is_refused() -> None:
    info = parse_module(guest(funcs=[("wasi_snapshot_preview1", "fd_read", 0)]))
    with pytest.raises(ModuleImportError, match="fd_read"):
        check_imports(info)


def test_metering_and_wasmbus_imports_are_allowed() -> None:
    data = module(
        section(1, vec([functype([0x7F], []), functype([0x7F, 0x7F], [])])),
        section(
            2,
            vec([func_import("metering", "usegas", 0), func_import("wasmbus", "__console_log", 1)]),
        ),
    )
    check_imports(parse_module(data))


def test_imported_memory() -> None:
    info = parse_module(guest(memory_from=("env", "memory"), memory=(1, 4)))
    assert info.memory == MemoryLimits(1, 4, imported=True)
    with pytest.raises(ModuleImportError, match=r"env\.memory \(memory\)"):
        check_imports(info)
    with pytest.raises(ModuleImportError, match="imports its linear memory"):
        clamp_memory(guest(memory_from=("env", "memory"), memory=(1, 4)), 8)


def test_missing_guest_call() -> None:
    with pytest.raises(ModuleExportError, match="__guest_call"):
        check_exports(parse_module(guest(export_guest_call=False)))


# --- memory clamping -----------------------------------------------------------------


@pytest.mark.parametrize(("declared", "budget", "expected"), [
    ((1, None), 8, (1, 8)),     # no maximum: the budget becomes the maximum
    ((1, 100), 8, (1, 8)),      # maximum above the budget: lowered
    ((2, 4), 8, (2, 4)),        # already within budget: untouched
    ((8, None), 8, (8, 8)),
])  # fmt: skip
def test_clamp_memory(
    declared: tuple[int, int | None], budget: int, expected: tuple[int, int]
) -> None:
    data = guest(memory=declared)
    clamped = clamp_memory(data, budget)
    info = parse_module(clamped)
    assert info.memory == MemoryLimits(*expected)
    if declared[1] is not None and declared[1] <= budget:
        assert clamped == data
    # only the memory section changed
    before = [data[s.offset : s.end] for s in iter_sections(data) if s.id != 5]
    after = [clamped[s.offset : s.end] for s in iter_sections(clamped) if s.id != 5]
    assert before == after


def test_clamp_rejects_a_minimum_above_the_budget() -> None:
    with pytest.raises(MemoryLimitError, match=r"at least 20 pages .* budget is 8 pages"):
        clamp_memory(guest(memory=(20, None)), 8)


def test_clamp_without_memory_is_a_no_op() -> None:
    data = guest(memory=None)
    assert clamp_memory(data, 8) == data


def test_clamp_limits_checks_the_budget() -> None:
    with pytest.raises(ValueError, match="page budget"):
        clamp_limits(MemoryLimits(1, None), 0)


@pytest.mark.parametrize(("declared", "budget"), [((2, 100), 5), ((1, None), 3)])
def test_clamped_memory_stops_growing_at_the_budget_in_wasm3(
    declared: tuple[int, int | None], budget: int
) -> None:
    grow = b"\x00\x20\x00\x40\x00\x0b"  # local.get 0; memory.grow; end  (type 0 ignores param 2)
    data = clamp_memory(guest(memory=declared, body=grow, funcs=[]), budget)
    env = wasm3.Environment()
    runtime = env.new_runtime(4096)
    runtime.load(env.parse_module(data))
    call = runtime.find_function("__guest_call")
    pages = declared[0]
    assert call(budget - pages, 0) == pages  # memory.grow returns the old size
    assert call(1, 0) == -1  # one page past the budget is refused


# --- features wasm3 0.5 cannot run -------------------------------------------------------

# Each was measured with pywasm3 0.5.0: the "bad" ones fail to compile, the "good" ones run.
UNSUPPORTED = {
    "memory.init + passive data": (
        "0061736d010000000105016000017f030201000503010001070501016600000c01010a13011100410041"
        "004101fc080000fc090041010b0b050101026162",
        "bulk-memory",
    ),
    "ref.null": (
        "0061736d010000000105016000017f03020100070501016600000a07010500d070d10b",
        "ref.null",
    ),
    "typed select": (
        "0061736d010000000105016000017f03020100070501016600000a0d010b004101410241001c017f0b",
        "typed select",
    ),
    "externref param": (
        "0061736d0100000001090260016f006000017f0303020001070501016600010a090202000b040041010b",
        "externref",
    ),
    "memory64": (
        "0061736d010000000105016000017f030201000503010401070501016600000a0601040041010b",
        "memory64",
    ),
    "shared memory": (
        "0061736d010000000105016000017f03020100050401030102070501016600000a0601040041010b",
        "shared memory",
    ),
}
SUPPORTED = {
    "memory.copy": (
        "0061736d010000000105016000017f030201000503010001070501016600000a10010e00410041004101"
        "fc0a000041010b"
    ),
    "sign-ext": "0061736d010000000105016000017f03020100070501016600000a070105004101c00b",
    "multi-value": (
        "0061736d01000000010a026000027f7f6000017f0303020001070501016600010a0e020600410141020b"
        "050010006a0b"
    ),
    "saturating trunc": (
        "0061736d010000000105016000017f03020100070501016600000a0b010900430000803ffc000b"
    ),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_features_are_found(case: str) -> None:
    hex_bytes, fragment = UNSUPPORTED[case]
    info = parse_module(bytes.fromhex(hex_bytes))
    assert any(fragment in finding for finding in info.unsupported), info.unsupported
    with pytest.raises(UnsupportedFeatureError, match="target-cpu=mvp"):
        check_supported(info)


@pytest.mark.parametrize("case", sorted(SUPPORTED))
def test_features_wasm3_runs_are_not_flagged(case: str) -> None:
    data = bytes.fromhex(SUPPORTED[case])
    assert parse_module(data).unsupported == ()
    env = wasm3.Environment()
    runtime = env.new_runtime(4096)
    runtime.load(env.parse_module(data))
    runtime.find_function("f")()


def test_rustc_182_call_indirect_is_flagged_and_matches_wasm3() -> None:
    data = overlong_call_indirect()
    info = parse_module(data)
    assert len(info.unsupported) == 1 and "call_indirect" in info.unsupported[0]
    env = wasm3.Environment()
    runtime = env.new_runtime(4096)
    runtime.load(env.parse_module(data))  # wasm3 compiles lazily: load still succeeds
    with pytest.raises(RuntimeError, match="LEB encoded value overflow") as raised:
        runtime.find_function("f")
    mapped = wasm3_error(raised.value)
    assert isinstance(mapped, UnsupportedFeatureError)
    assert "rustc >= 1.82" in str(mapped) and "target-cpu=mvp" in str(mapped)


@pytest.mark.parametrize(("message", "kind"), [
    ("LEB encoded value overflow", UnsupportedFeatureError),
    ("restricted opcode", UnsupportedFeatureError),
    ("unknown value_type", UnsupportedFeatureError),
    ("malformed Wasm binary", ModuleFormatError),
])  # fmt: skip
def test_wasm3_error_mapping(message: str, kind: type[ModuleError]) -> None:
    error = wasm3_error(RuntimeError(message))
    assert type(error) is kind
    assert message in str(error)


# --- our own guests ------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(p.name for p in GUESTS.glob("*.wasm")))
def test_project_guests_are_plain_wapc(file: str) -> None:
    info = parse_module((GUESTS / file).read_bytes())
    assert info.unsupported == ()
    check_imports(info)
    check_exports(info)
    assert {i.module for i in info.imports} == {"wapc"}


def test_membomb_declares_no_maximum() -> None:
    info = parse_module((GUESTS / "membomb.wasm").read_bytes())
    assert info.memory == MemoryLimits(1, None)


def test_custom_section_name_must_be_utf8() -> None:
    bad = module(section(0, leb(2) + b"\xff\xfe"))
    with pytest.raises(ModuleFormatError, match="UTF-8"):
        parse_module(bad)
    assert parse_module(module(custom("x", b"payload"))).custom_section_names == ("x",)
    assert name("x") == b"\x01x"
