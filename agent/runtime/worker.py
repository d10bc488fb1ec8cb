"""The sandbox worker process: ``python -m agent.runtime.worker [--memory-limit-mb N]
[--status-fd FD]``.

The agent (:mod:`agent.runtime.workerproc`) starts it as a plain subprocess so it inherits
none of the agent's state. It speaks :mod:`agent.runtime.protocol` frames: requests on
stdin, replies on stdout; stderr is left to wasm3, which prints trap backtraces there, and
the agent captures it. It holds several actors, one :class:`~agent.runtime.wapc.WapcInstance`
each, and runs requests in the order they arrive.

**Nested invocations.** When a guest makes a host call the worker sends a
:class:`~agent.runtime.protocol.HostCall` and waits for the agent's
:class:`~agent.runtime.protocol.HostReply`. Serving that host call may need another actor of
this very worker (actor-to-actor calls are routed back here), so while it waits the worker
runs queued requests for actors that are idle, on top of the waiting one (a stack). It never
re-enters an instance that is mid-call (waPC guests are not re-entrant): requests for a busy
actor wait until it is idle, and keep their order.

**Status page and batched writes.** Every frame goes first to the spill area of the status
page (:mod:`agent.runtime.statuspage`) and reaches the pipe in one write per batch: when the
worker is about to wait for input, before a host call, after :data:`FLUSH_EVERY` frames or
:data:`FLUSH_AGE_S`, and before a request for an actor whose last request was slow (so a slow
guest does not sit on answers that are ready). The page also holds the stack of started
requests. If the agent kills the worker it reads both: finished answers are never lost, and
it knows exactly which requests had started (those fail) and which had not (those are
resent), so nothing runs twice.

Before running any guest it caps its address space (``RLIMIT_AS``), ignores SIGINT (the
agent decides when workers stop) and asks Linux to SIGKILL it if the agent dies. Imports
are kept to the minimum: start-up is a hot path on a Pi Zero.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

from agent.errors import LatticeEdgeError
from agent.runtime.protocol import (
    Bye,
    Failure,
    FrameDecoder,
    HostCall,
    HostReply,
    Invoke,
    InvokeBatch,
    InvokeItem,
    Load,
    Ready,
    Unload,
    decode_message,
    encode_message,
    encode_result,
    error_to_wire,
)
from agent.runtime.statuspage import (
    DEPTH,
    HOST_WAIT,
    IDS,
    MAX_DEPTH,
    RUNNING,
    SENDING,
    SINCE,
    SPENT,
    SPILL_BYTES,
    STATES,
    USED,
    StatusPage,
)

if TYPE_CHECKING:
    from agent.runtime.wapc import WapcInstance

__all__ = ["FLUSH_AGE_S", "FLUSH_EVERY", "SLOW_CALL_S", "Worker", "main"]

READ_SIZE = 256 * 1024
FLUSH_EVERY = 16  # frames held before a write: enough to amortise the syscall and wake-up
FLUSH_AGE_S = 0.001  # never hold a ready answer longer than this before starting a request
SLOW_CALL_S = 0.001  # an actor slower than this gets the pipe flushed before it runs
_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_KEEP_HEAP_BYTES = 1024 * 1024
_HEAP_PAD_BYTES = 256 * 1024

_Queued = InvokeItem | Load | Unload | Bye


class _AgentGone(BaseException):
    """stdin closed while a guest waited for a host reply: unwind everything and exit.

    A BaseException so that the waPC host's "report host-call failures to the guest"
    handler does not catch it.
    """


class _HostError(Exception):
    """The agent reported a failed host call; the waPC host hands its text to the guest."""


class Worker:
    """The request loop of one worker process (see the module docstring)."""

    def __init__(self, in_fd: int, out_fd: int, page: StatusPage | None = None) -> None:
        # Imported here so ``--help`` and argument errors stay cheap.
        from agent.runtime.wapc import WapcInstance

        self._instance_cls = WapcInstance
        self._in = in_fd
        self._out = out_fd
        self._page = page if page is not None else StatusPage(None)
        self._ints = self._page.ints
        self._floats = self._page.floats
        self._spill = self._page.spill
        self._used = 0  # bytes in the spill area (mirrors the page's USED slot)
        self._held = 0  # frames in the spill area
        self._held_since = 0.0  # when the oldest of them was added
        self._decoder = FrameDecoder()
        self._read_buffer = bytearray(READ_SIZE)
        self._read_view = memoryview(self._read_buffer)
        self._inbox: deque[_Queued] = deque()
        self._replies: dict[int, HostReply] = {}
        self._actors: dict[str, WapcInstance] = {}
        self._stack: list[int] = []  # req ids of started requests (mirrors the page)
        self._busy: set[str] = set()  # actors with a request on the stack
        self._slow: set[str] = set()  # actors whose last request took over SLOW_CALL_S

    def run(self) -> int:
        """Serve requests until stdin closes or :class:`Bye` arrives; return the exit code."""
        import wasm3

        self._emit(encode_message(Ready(os.getpid(), str(wasm3.M3_VERSION))))
        inbox = self._inbox
        while True:
            if not inbox:
                self._flush()  # whatever we owe the agent goes out before we block
                if not self._read_more():
                    self._flush()
                    return 0
                continue
            item = inbox.popleft()
            if type(item) is tuple:
                self._invoke(*item)
            elif isinstance(item, Bye):
                self._flush()
                return 0
            else:
                self._run(item)

    # --- requests ---------------------------------------------------------------------

    def _run(self, item: _Queued) -> None:
        if type(item) is tuple:
            self._invoke(*item)
        elif isinstance(item, Load):
            self._load(item)
        elif isinstance(item, Unload):
            self._actors.pop(item.actor_id, None)
            self._emit(encode_result(item.req_id, b"", ()))
        else:
            raise SystemExit(f"worker: unexpected request {type(item).__name__}")

    def _invoke(self, req_id: int, actor_id: str, operation: str, payload: bytes) -> None:
        # The hot path: _push, _finish and _emit written out inline (a method call costs
        # about as much as the bookkeeping itself).
        instance = self._actors.get(actor_id)
        if instance is None:
            message = f"actor {actor_id} is not loaded"
            self._emit(encode_message(Failure(req_id, "ActorError", message, ())))
            return
        started = monotonic()
        if self._held and (
            self._held >= FLUSH_EVERY
            or started - self._held_since > FLUSH_AGE_S
            or actor_id in self._slow
        ):
            self._flush()
        stack, ints, floats = self._stack, self._ints, self._floats
        depth = len(stack)
        # The entry is complete before DEPTH covers it: a reader never sees a half entry.
        ints[IDS + depth] = req_id
        ints[STATES + depth] = RUNNING
        floats[SINCE + depth] = started
        floats[SPENT + depth] = 0.0
        ints[DEPTH] = depth + 1
        stack.append(req_id)
        self._busy.add(actor_id)
        try:
            response = instance.invoke(operation, payload)
        except LatticeEdgeError as exc:
            console = instance.take_console()
            frame = encode_message(Failure(req_id, error_to_wire(exc), str(exc), console))
        else:
            frame = encode_result(req_id, response, instance.take_console())
        now = monotonic()
        if now - started > SLOW_CALL_S:
            self._slow.add(actor_id)
        elif self._slow:
            self._slow.discard(actor_id)
        # The answer is stored before the request leaves the stack, so at every instant a
        # started request is on the stack, has its answer in the spill area/pipe, or both.
        ints[STATES + depth] = SENDING  # the guest is done: a blocked write is not its time
        used = self._used
        end = used + len(frame)
        if end <= SPILL_BYTES:
            self._spill[used:end] = frame
            self._used = end
            ints[USED] = end
            if not self._held:
                self._held_since = now
            self._held += 1
        else:
            self._emit(frame, now)
        stack.pop()
        ints[DEPTH] = depth
        self._busy.discard(actor_id)

    def _load(self, message: Load) -> None:
        self._flush()  # instantiating can take long: send what is ready first
        actor_id = message.actor_id
        started = monotonic()
        self._push(message.req_id, actor_id, started)
        self._actors.pop(actor_id, None)
        try:
            instance = self._instance_cls(
                message.wasm, host_call=self._host_call, stack_bytes=message.stack_bytes
            )
        except LatticeEdgeError as exc:
            frame = encode_message(Failure(message.req_id, error_to_wire(exc), str(exc), ()))
        else:
            self._actors[actor_id] = instance
            frame = encode_result(message.req_id, b"", instance.take_console())
        self._finish(frame, actor_id, started)

    def _push(self, req_id: int, actor_id: str, now: float) -> None:
        depth = len(self._stack)
        ints, floats = self._ints, self._floats
        ints[IDS + depth] = req_id
        ints[STATES + depth] = RUNNING
        floats[SINCE + depth] = now
        floats[SPENT + depth] = 0.0
        ints[DEPTH] = depth + 1
        self._stack.append(req_id)
        self._busy.add(actor_id)

    def _finish(self, frame: bytes, actor_id: str, started: float) -> None:
        now = monotonic()
        if now - started > SLOW_CALL_S:
            self._slow.add(actor_id)
        else:
            self._slow.discard(actor_id)
        self._ints[STATES + len(self._stack) - 1] = SENDING
        self._emit(frame, now)
        self._stack.pop()
        self._ints[DEPTH] = len(self._stack)
        self._busy.discard(actor_id)

    def _host_call(self, binding: str, namespace: str, operation: str, payload: bytes) -> bytes:
        """Serve a guest's ``__host_call`` (the guest on top of the stack made it)."""
        stack, ints, floats = self._stack, self._ints, self._floats
        top = len(stack) - 1
        req_id = stack[top]
        now = monotonic()
        floats[SPENT + top] += now - floats[SINCE + top]
        ints[STATES + top] = HOST_WAIT  # waiting on the agent does not use the guest's budget
        self._emit(encode_message(HostCall(req_id, binding, namespace, operation, payload)), now)
        self._flush()
        reply = self._await_reply(req_id)
        floats[SINCE + top] = monotonic()
        ints[STATES + top] = RUNNING
        if reply.error is not None:
            raise _HostError(reply.error)
        return reply.payload

    def _await_reply(self, req_id: int) -> HostReply:
        """Wait for a host reply, running requests for idle actors meanwhile."""
        while True:
            reply = self._replies.pop(req_id, None)
            if reply is not None:
                return reply
            if len(self._stack) < MAX_DEPTH:
                item = self._take_runnable()
                if item is not None:
                    self._run(item)
                    continue
            self._flush()
            if not self._read_more():
                raise _AgentGone

    def _take_runnable(self) -> _Queued | None:
        """Remove and return the first queued request whose actor is idle, if any."""
        busy = self._busy
        for index, item in enumerate(self._inbox):
            if isinstance(item, Load | Unload):
                actor_id = item.actor_id
            elif isinstance(item, Bye):
                return None  # nothing follows it, and it must wait for the stack to unwind
            else:
                actor_id = item[1]
            if actor_id not in busy:
                del self._inbox[index]
                return item
        return None

    # --- framing ----------------------------------------------------------------------

    def _read_more(self) -> bool:
        # Into one reused buffer: a fresh 256 KiB bytes per read is an mmap/munmap pair
        # plus page faults in glibc, which cost more than the frames it carries.
        count = os.readv(self._in, (self._read_buffer,))
        if not count:
            return False
        inbox = self._inbox
        for body in self._decoder.feed(self._read_view[:count]):
            message = decode_message(body)
            if isinstance(message, InvokeBatch):
                inbox.extend(message.items)
            elif isinstance(message, HostReply):
                self._replies[message.req_id] = message
            elif isinstance(message, Invoke):
                inbox.append(tuple(message))  # type: ignore[arg-type]
            elif isinstance(message, Load | Unload | Bye):
                inbox.append(message)
            else:
                # Only the agent writes here; anything else means the pipe is corrupt.
                raise SystemExit(f"worker: unexpected message {type(message).__name__}")
        return True

    def _emit(self, frame: bytes, now: float = 0.0) -> None:
        """Queue one frame: into the spill area, or straight out when it does not fit."""
        used = self._used
        end = used + len(frame)
        if end > SPILL_BYTES:
            self._flush()
            if len(frame) > SPILL_BYTES:
                # Too big to keep: its request stays on the stack until it is written.
                self._write(frame)
                return
            used, end = 0, len(frame)
        self._spill[used:end] = frame
        self._used = end
        self._ints[USED] = end
        if not self._held:
            self._held_since = now or monotonic()
        self._held += 1

    def _flush(self) -> None:
        if not self._used:
            return
        self._write(self._spill[: self._used])
        # Only now is the area free; a kill before this line makes the agent read the
        # frames twice, which it tolerates (see agent.runtime.statuspage).
        self._used = self._held = 0
        self._ints[USED] = 0

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._out, view)
            view = view[written:]


def _harden(memory_limit_mb: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb > 0:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if sys.platform.startswith("linux"):
        import ctypes

        # If the agent dies we must not spin forever in a guest loop as an orphan.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if hasattr(libc, "mallopt"):  # glibc
            # Every batch of payloads frees a few dozen KiB at the top of the heap; with
            # the default 128 KiB trim threshold glibc returns it and takes it back with
            # brk about once a batch, page faults included. Keep up to 1 MiB instead.
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_HEAP_BYTES)
            libc.mallopt(_M_TOP_PAD, _HEAP_PAD_BYTES)
        if os.getppid() == 1:  # the agent died before prctl took effect
            os._exit(0)


def _private_pipes() -> tuple[int, int]:
    """Move the protocol pipes off fds 0/1 so stray prints cannot corrupt frames."""
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # anything written to stdout (Python or C) lands in the captured stderr
    return in_fd, out_fd


def _parse_args(args: list[str]) -> dict[str, int] | None:
    options: dict[str, int] = {}
    if len(args) % 2:
        return None
    for name, value in zip(args[::2], args[1::2], strict=True):
        if name not in ("--memory-limit-mb", "--status-fd") or not value.isdigit():
            return None
        options[name] = int(value)
    return options


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the options, harden the process, serve until EOF."""
    options = _parse_args(sys.argv[1:] if argv is None else argv)
    if options is None:
        print(
            "usage: python -m agent.runtime.worker [--memory-limit-mb N] [--status-fd FD]",
            file=sys.stderr,
        )
        return 2
    _harden(options.get("--memory-limit-mb", 0))
    status_fd = options.get("--status-fd")
    page = StatusPage(status_fd)
    if status_fd is not None:
        os.close(status_fd)  # the mapping stays; the fd is not needed any more
    in_fd, out_fd = _private_pipes()
    try:
        return Worker(in_fd, out_fd, page).run()
    except (_AgentGone, BrokenPipeError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
