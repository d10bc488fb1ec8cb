"""An in-process waPC host over wasm3 (pywasm3 0.5.0).

This runs inside sandbox worker processes (:mod:`agent.runtime.worker`), never in the
asyncio agent: a guest call holds the GIL and cannot be interrupted. The benchmark also uses
it directly as the in-process baseline.

One :class:`WapcInstance` is one instantiated actor, created once and reused for every
invocation (pywasm3 0.5 leaks ~150 KiB per discarded runtime). The nine waPC imports are
linked under both ``wapc`` and ``wasmbus``, plus WASI ``fd_write`` (captured as console
lines) and ``proc_exit`` stubs under ``wasi_unstable`` and ``wasi_snapshot_preview1``.

Memory views: ``Runtime.get_memory`` leaks 80 bytes per call, and a view dangles after
``memory.grow`` because wasm3 reallocates linear memory. So each import that touches guest
memory fetches exactly one fresh view, uses it, and drops it before returning to the guest;
imports that don't touch memory (the ``*_len`` ones) fetch none. An echo costs two fetches.
"""

from __future__ import annotations

from collections.abc import Callable

import wasm3

from agent.errors import (
    GuestError,
    ModuleError,
    ModuleExportError,
    ModuleImportError,
    TrapError,
)

__all__ = [
    "DEFAULT_STACK_BYTES",
    "MAX_CONSOLE_LINES",
    "START_FUNCTIONS",
    "HostCallback",
    "WapcInstance",
]

HostCallback = Callable[[str, str, str, bytes], bytes]
"""``(binding, namespace, operation, payload) -> response``; raise to fail the host call."""

DEFAULT_STACK_BYTES = 64 * 1024
# Run in this order when exported (wapc-rs runs _start then wapc_init; wapc-go also runs
# _initialize). AssemblyScript guests use a start section, which wasm3 runs on load.
START_FUNCTIONS = ("_start", "_initialize", "wapc_init")
MAX_CONSOLE_LINES = 256  # per invocation; a chatty guest must not grow the worker unbounded
MAX_CONSOLE_LINE_CHARS = 8192
MAX_IOVECS = 1024

_WAPC_MODULES = ("wapc", "wasmbus")
_WASI_MODULES = ("wasi_unstable", "wasi_snapshot_preview1")
_U32 = 0xFFFFFFFF
_I32 = 1  # wasm3's type code for i32 in Function.arg_types / ret_types
_WASI_EINVAL = 28


class _GuestFault(Exception):
    """A host import was handed bad pointers; becomes a TrapError for the invocation."""


class _ProcExit(Exception):
    """The guest called WASI ``proc_exit``; unwinds the guest call."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the guest called proc_exit({code})")
        self.code = code


class WapcInstance:
    """One instantiated waPC actor in wasm3, reused for every invocation.

    Not thread-safe and not re-entrant, like every waPC host. ``host_call`` serves the
    guest's ``__host_call``; an exception it raises becomes the guest-visible host error.
    Construction runs the start section, ``_start``/``_initialize``/``wapc_init``; it raises
    :class:`ModuleError` subclasses for modules wasm3 rejects and :class:`TrapError` when a
    start function traps.
    """

    def __init__(
        self,
        wasm: bytes,
        *,
        host_call: HostCallback | None = None,
        stack_bytes: int = DEFAULT_STACK_BYTES,
    ) -> None:
        self._host_cb: HostCallback = host_call or _no_host_calls
        self._op = b""
        self._payload = b""
        self._response: bytes | None = None
        self._error: str | None = None
        self._host_response = b""
        self._host_error = b""
        self._console: list[str] = []
        self._dropped = 0
        self._partial = ""  # fd_write text after the last newline
        self._busy = False
        self._env = wasm3.Environment()
        self._rt = self._env.new_runtime(stack_bytes)
        try:
            self._module = self._env.parse_module(wasm)
        except RuntimeError as exc:
            raise _module_error(exc) from None
        try:
            self._rt.load(self._module)  # runs a start section, if any
        except RuntimeError as exc:
            raise _load_error(exc) from None
        self._link()  # after load: link_function before load segfaults pywasm3 0.5
        guest_call = self._find_export("__guest_call")
        if guest_call is None:
            raise ModuleExportError("the module does not export __guest_call: not a waPC actor")
        self._guest_call = guest_call
        if self._guest_call.arg_types != (_I32, _I32) or self._guest_call.ret_types != (_I32,):
            raise ModuleExportError("__guest_call must have the signature (i32, i32) -> i32")
        self._busy = True
        try:
            for name in START_FUNCTIONS:
                start = self._find_export(name)
                if start is None:
                    continue
                # pywasm3 does not check argument counts; too few arguments segfault.
                if start.num_args != 0:
                    raise ModuleExportError(f"start function {name} must take no arguments")
                self._call_guarded(start)
        finally:
            self._busy = False

    # --- public API -------------------------------------------------------------------

    def invoke(self, operation: str, payload: bytes) -> bytes:
        """Run one waPC invocation and return the guest's response.

        Raises :class:`GuestError` with the guest's message when it reports an error, and
        :class:`TrapError` when it traps (the instance stays usable after both).
        """
        if self._busy:
            raise GuestError("the actor is already running an invocation (waPC is not re-entrant)")
        op = operation.encode()
        self._op = op
        self._payload = payload
        self._response = None
        self._error = None
        self._busy = True
        try:
            ok = self._call_guarded(self._guest_call, len(op), len(payload))
        finally:
            self._busy = False
            self._op = self._payload = b""
            self._host_response = self._host_error = b""
        response, error = self._response, self._error
        self._response = self._error = None
        if ok == 1:
            if response is not None:
                return response
            if error is not None:
                raise GuestError(error)
            raise GuestError("the guest returned success but set no response")
        raise GuestError(error if error is not None else "the guest failed without a message")

    def take_console(self) -> tuple[str, ...]:
        """Return and clear the console lines (``__console_log``, WASI stdout/stderr)."""
        if not (self._console or self._partial or self._dropped):
            return ()
        if self._partial:
            self._add_line(self._partial)
            self._partial = ""
        lines = self._console
        if self._dropped:
            lines.append(f"[{self._dropped} more console lines dropped]")
            self._dropped = 0
        self._console = []
        return tuple(lines)

    # --- wasm3 plumbing ---------------------------------------------------------------

    def _link(self) -> None:
        imports: tuple[tuple[str, str, Callable[..., int | None]], ...] = (
            ("__host_call", "i(iiiiiiii)", self._imp_host_call),
            ("__host_response", "v(i)", self._imp_host_response),
            ("__host_response_len", "i()", self._imp_host_response_len),
            ("__host_error", "v(i)", self._imp_host_error),
            ("__host_error_len", "i()", self._imp_host_error_len),
            ("__guest_request", "v(ii)", self._imp_guest_request),
            ("__guest_response", "v(ii)", self._imp_guest_response),
            ("__guest_error", "v(ii)", self._imp_guest_error),
            ("__console_log", "v(ii)", self._imp_console_log),
        )
        wasi: tuple[tuple[str, str, Callable[..., int | None]], ...] = (
            ("fd_write", "i(iiii)", self._imp_fd_write),
            ("proc_exit", "v(i)", self._imp_proc_exit),
        )
        links = [(m, *entry) for m in _WAPC_MODULES for entry in imports]
        links += [(m, *entry) for m in _WASI_MODULES for entry in wasi]
        for module_name, name, signature, function in links:
            try:
                # Silently ignored by wasm3 when the module does not import the name.
                self._module.link_function(module_name, name, signature, function)
            except RuntimeError as exc:
                raise ModuleImportError(
                    f"import {module_name}.{name} does not have the waPC signature "
                    f"{signature}: {exc}"
                ) from None

    def _find_export(self, name: str) -> wasm3.Function | None:
        try:
            return self._rt.find_function(name)
        except RuntimeError as exc:
            if "function lookup failed" in str(exc):
                return None
            # wasm3 compiles on lookup, so an import nobody linked surfaces here.
            raise _load_error(exc) from None

    def _call_guarded(self, function: wasm3.Function, *args: int) -> object:
        try:
            return function(*args)
        except _GuestFault as exc:
            raise TrapError(f"[trap] {exc}") from None
        except _ProcExit as exc:
            raise TrapError(f"[trap] {exc}") from None
        except RuntimeError as exc:
            raise TrapError(str(exc)) from None

    def _memory(self) -> memoryview:
        memory = self._rt.get_memory(0)
        if memory is None:
            raise _GuestFault("the module has no linear memory")
        return memory  # type: ignore[no-any-return]

    @staticmethod
    def _span(memory: memoryview, ptr: int, length: int) -> tuple[int, int]:
        start, size = ptr & _U32, length & _U32  # wasm3 passes i32 as signed Python ints
        end = start + size
        if end > len(memory):
            raise _GuestFault(
                f"out of bounds host memory access (offset {start}, length {size}, "
                f"memory size {len(memory)})"
            )
        return start, end

    def _read(self, memory: memoryview, ptr: int, length: int) -> bytes:
        start, end = self._span(memory, ptr, length)
        return memory[start:end].tobytes()

    def _write(self, ptr: int, data: bytes) -> None:
        memory = self._memory()
        start, end = self._span(memory, ptr, len(data))
        memory[start:end] = data

    def _add_line(self, text: str) -> None:
        if len(self._console) >= MAX_CONSOLE_LINES:
            self._dropped += 1
            return
        if len(text) > MAX_CONSOLE_LINE_CHARS:
            text = text[:MAX_CONSOLE_LINE_CHARS] + " [truncated]"
        self._console.append(text)

    # --- imports (wasm3 calls these with the GIL held) -------------------------------

    def _imp_guest_request(self, op_ptr: int, payload_ptr: int) -> None:
        memory = self._memory()
        start, end = self._span(memory, op_ptr, len(self._op))
        memory[start:end] = self._op
        start, end = self._span(memory, payload_ptr, len(self._payload))
        memory[start:end] = self._payload

    def _imp_guest_response(self, ptr: int, length: int) -> None:
        self._response = self._read(self._memory(), ptr, length)

    def _imp_guest_error(self, ptr: int, length: int) -> None:
        self._error = self._read(self._memory(), ptr, length).decode("utf-8", "replace")

    def _imp_console_log(self, ptr: int, length: int) -> None:
        self._add_line(self._read(self._memory(), ptr, length).decode("utf-8", "replace"))

    def _imp_host_call(
        self,
        binding_ptr: int,
        binding_len: int,
        namespace_ptr: int,
        namespace_len: int,
        operation_ptr: int,
        operation_len: int,
        payload_ptr: int,
        payload_len: int,
    ) -> int:
        memory = self._memory()
        binding = self._read(memory, binding_ptr, binding_len).decode("utf-8", "replace")
        namespace = self._read(memory, namespace_ptr, namespace_len).decode("utf-8", "replace")
        operation = self._read(memory, operation_ptr, operation_len).decode("utf-8", "replace")
        payload = self._read(memory, payload_ptr, payload_len)
        del memory  # the callback may take long; never hold a view the guest could outgrow
        self._host_response = self._host_error = b""
        try:
            self._host_response = self._host_cb(binding, namespace, operation, payload)
        except Exception as exc:  # waPC contract: any failure is reported to the guest
            self._host_error = (str(exc) or type(exc).__name__).encode()
            return 0
        return 1

    def _imp_host_response_len(self) -> int:
        return len(self._host_response)

    def _imp_host_response(self, ptr: int) -> None:
        if self._host_response:
            self._write(ptr, self._host_response)

    def _imp_host_error_len(self) -> int:
        return len(self._host_error)

    def _imp_host_error(self, ptr: int) -> None:
        if self._host_error:
            self._write(ptr, self._host_error)

    def _imp_fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        count = iovs_len & _U32
        if count > MAX_IOVECS:
            return _WASI_EINVAL
        memory = self._memory()
        vectors = self._read(memory, iovs, 8 * count)
        chunks = []
        for i in range(count):
            ptr = int.from_bytes(vectors[8 * i : 8 * i + 4], "little")
            size = int.from_bytes(vectors[8 * i + 4 : 8 * i + 8], "little")
            chunks.append(self._read(memory, ptr, size))
        data = b"".join(chunks)
        start, end = self._span(memory, nwritten_ptr, 4)
        memory[start:end] = len(data).to_bytes(4, "little")
        del memory
        prefix = "" if fd == 1 else f"[fd {fd}] "
        text = self._partial + data.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._add_line(prefix + line)
        if len(self._partial) > MAX_CONSOLE_LINE_CHARS:
            self._add_line(prefix + self._partial)
            self._partial = ""
        return 0

    def _imp_proc_exit(self, code: int) -> None:
        raise _ProcExit(code)


def _no_host_calls(binding: str, namespace: str, operation: str, payload: bytes) -> bytes:
    raise LookupError(f"no link exists for {namespace} on binding {binding}")


def _module_error(exc: RuntimeError) -> ModuleError:
    # Imported here: only the error path needs it, and worker start-up time matters.
    from agent.runtime.module import wasm3_error

    return wasm3_error(exc)


def _load_error(exc: RuntimeError) -> ModuleError | TrapError:
    text = str(exc)
    if text.startswith("[trap]"):
        return TrapError(text)
    if "missing imported function" in text:
        return ModuleImportError(f"the module needs an import the host does not provide: {text}")
    return _module_error(exc)
