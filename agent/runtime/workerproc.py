"""The agent's handle on one sandbox worker process (used by :mod:`agent.runtime.sandbox`).

A :class:`WorkerProcess` owns the subprocess and tracks the requests in flight on it. It is
driven by pipe callbacks (an asyncio subprocess protocol), not by reader tasks: answers are
decoded and handed to their callers in the callback that received them, which is the
cheapest path asyncio has. Outgoing invocations queued during one event-loop iteration go
out as one :class:`~agent.runtime.protocol.InvokeBatch` frame in one pipe write.

Each host call a guest makes is served in its own task, so the worker's other answers keep
flowing while a handler waits, in particular the answer of a nested invocation that the
handler itself is waiting for. The task runs with :data:`CALL_CHAIN` extended by the calling
request, which lets the sandbox refuse a call back into an actor already running further up
the chain (waPC guests are not re-entrant) instead of letting it wait for itself.

When the process is gone, :meth:`WorkerProcess.run` reads the worker's status page
(:mod:`agent.runtime.statuspage`): answers still in its spill area are delivered, and
``started`` lists the unanswered requests that had started (the rest never ran). Policy
(deadlines, respawn, quarantine, recycling) is the sandbox's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import fcntl
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import HostCallError, WorkerProtocolError
from agent.runtime.builtins import HostCallHandler
from agent.runtime.protocol import (
    Bye,
    Failure,
    FrameDecoder,
    HostCall,
    HostReply,
    InvokeItem,
    Log,
    Ready,
    Result,
    decode_frames,
    decode_message,
    encode_invoke_batch,
    encode_message,
)
from agent.runtime.statuspage import RUNNING, StackTop, StatusPage
from agent.runtime.workerlog import StderrLog

__all__ = [
    "CALL_CHAIN",
    "HostCallRecord",
    "KillReason",
    "Request",
    "RequestKind",
    "WorkerProcess",
    "WorkerState",
]

log = logging.getLogger("agent.runtime.sandbox")

WRITE_HIGH_WATER = 8 * 1024 * 1024  # callers wait for the pipe above this much backlog
PIPE_READ_SIZE = 64 * 1024
PIPE_BYTES = 256 * 1024
BATCH_BYTES = 4 * 1024 * 1024  # an InvokeBatch frame is closed past this many payload bytes
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

CALL_CHAIN: contextvars.ContextVar[tuple[tuple[int, str], ...]] = contextvars.ContextVar(
    "lattice_edge_call_chain", default=()
)
"""``(sandbox id, actor id)`` of every invocation whose host call the current task serves,
outermost first; empty outside host-call handlers."""


class KillReason(enum.Enum):
    """Why the sandbox ended a worker itself (:attr:`WorkerProcess.kill_reason`).

    A worker whose ``kill_reason`` is None died of something the sandbox did not do: it
    exited, crashed, or got a signal from elsewhere (the kernel's OOM killer, an operator).
    A worker retired by a recycle is not killed: it drains and exits (Bye).
    """

    DEADLINE = "deadline"  # the request in kill_target ran past its deadline
    STARTUP_TIMEOUT = "startup timeout"  # it never said Ready
    PROTOCOL_ERROR = "protocol error"  # it sent a frame that does not decode
    SANDBOX_CLOSED = "sandbox closed"
    SPAWN_FAILED = "spawn failed"  # it could not be started (the OSError is in kill_detail)
    CANCELLED = "cancelled"  # the task that served it was cancelled


class WorkerState(enum.Enum):
    """Lifecycle of one worker process."""

    STARTING = "starting"  # spawned (or about to be); requests queue up until it reads them
    READY = "ready"  # sent Ready; serving
    DRAINING = "draining"  # being recycled: no new requests, exits when its queue is empty
    DEAD = "dead"  # exited or killed; its output has been read


@dataclass(frozen=True, slots=True)
class HostCallRecord:
    """One host call a guest made during a request, with its outcome."""

    binding: str
    namespace: str
    operation: str
    payload: bytes
    response: bytes
    error: str | None


class RequestKind(enum.Enum):
    """What a request asks of the worker."""

    LOAD = "load"
    INVOKE = "invocation"
    UNLOAD = "unload"


@dataclass(slots=True, eq=False)
class Request:
    """A request in flight. ``future`` is None for the sandbox's own reloads/unloads."""

    req_id: int
    actor_id: str
    slot: int  # the sandbox slot whose worker runs it (kept when it is resent)
    kind: RequestKind
    operation: str  # invocations: what to run...
    payload: bytes  # ...with what
    frame: bytes  # loads/unloads: the encoded request, kept so it can be resent
    budget: float  # guest run time allowed once the worker runs it
    expires_at: float  # the caller's absolute deadline (event loop clock)
    future: asyncio.Future[Result] | None
    chain: tuple[tuple[int, str], ...] = ()  # CALL_CHAIN when it was made
    host_calls: list[HostCallRecord] | None = None
    worker: WorkerProcess | None = None  # the worker it was last sent to
    resends: int = 0


class WorkerProcess:
    """One worker subprocess and the requests in flight on it.

    ``on_reply(worker, request, message)`` gets every Failure, and the Results of requests
    without a future (``request`` is None for an unknown id); ``on_exit(worker)`` runs once,
    after the process has exited and all of its output was read, with the unanswered
    requests still in ``inflight`` and the started ones listed in ``started``.
    ``chain_key`` identifies the owning sandbox in :data:`CALL_CHAIN`.
    """

    def __init__(
        self,
        name: str,
        *,
        memory_limit_mb: int,
        host_call_handler: HostCallHandler,
        on_reply: Callable[[WorkerProcess, Request | None, Result | Failure], None],
        on_exit: Callable[[WorkerProcess], None],
        start_delay: float = 0.0,
        chain_key: int = 0,
    ) -> None:
        self.name = name
        self.state = WorkerState.STARTING
        self.inflight: dict[int, Request] = {}
        self.started: list[int] = []  # set at exit: unanswered requests that had started
        self.calls_sent = 0
        self.pid: int | None = None
        self.returncode: int | None = None
        self.kill_reason: KillReason | None = None
        self.kill_detail = ""  # what the reason alone does not say (the protocol error...)
        self.kill_target: int | None = None  # req_id running when we killed it
        self.guest_running: int | None = None  # set at exit: the request whose guest ran
        self.last_seen: StackTop | None = None  # the watchdog's previous reading
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.spawned_at = loop.time()
        self._memory_limit_mb = memory_limit_mb
        self._handler = host_call_handler
        self._on_reply = on_reply
        self._on_exit = on_exit
        self._start_delay = start_delay
        self._chain_key = chain_key
        self._page: StatusPage | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._decoder: FrameDecoder | None = FrameDecoder()
        self._stderr = StderrLog(name, log)
        self._out: list[bytes] = []
        self._batch: list[InvokeItem] = []
        self._batch_bytes = 0
        self._flush_scheduled = False
        self._closing_input = False
        self._drained: asyncio.Future[None] | None = None  # set while the pipe is backlogged
        self._host_tasks: set[asyncio.Task[None]] = set()
        self._open_pipes = {1, 2}
        self._exited = False
        self._done: asyncio.Future[None] = loop.create_future()

    # --- sending ----------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue ``request`` to the worker (it runs after everything queued before it)."""
        if request.kind is RequestKind.INVOKE:
            self.submit_invoke(request)
            return
        self.inflight[request.req_id] = request
        request.worker = self
        self._close_batch()
        self._out.append(request.frame)
        if not self._flush_scheduled and self._stdin is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def submit_invoke(self, request: Request) -> None:
        """:meth:`submit` for an invocation (the hot path: it joins the pending batch)."""
        req_id = request.req_id
        self.inflight[req_id] = request
        request.worker = self
        self.calls_sent += 1
        payload = request.payload
        self._batch.append((req_id, request.actor_id, request.operation, payload))
        self._batch_bytes += len(payload) + 64  # +64: the rest of the item, roughly
        if self._batch_bytes > BATCH_BYTES:
            self._close_batch()
        if not self._flush_scheduled and self._stdin is not None:
            # One write per loop iteration: pipelined callers share a frame and a syscall.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    @property
    def backlogged(self) -> bool:
        """True when so much is queued for the pipe that callers should wait."""
        if self._stdin is None:
            return self._batch_bytes + sum(map(len, self._out)) > WRITE_HIGH_WATER
        return self._drained is not None

    async def wait_writable(self) -> None:
        """Wait until the pipe to the worker has drained below its high-water mark."""
        if self._drained is not None:
            await asyncio.shield(self._drained)

    def _queue(self, frame: bytes) -> None:
        self._close_batch()  # keep the order of everything sent
        self._out.append(frame)
        if not self._flush_scheduled and self._stdin is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _close_batch(self) -> None:
        if self._batch:
            self._out.append(encode_invoke_batch(self._batch))
            self._batch = []
            self._batch_bytes = 0

    def _flush(self) -> None:
        self._flush_scheduled = False
        stdin = self._stdin
        if stdin is None or self.state is WorkerState.DEAD:
            return
        self._close_batch()
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if not stdin.is_closing():
            stdin.write(data)

    def drain_and_exit(self) -> None:
        """Stop taking requests; close the worker's stdin once nothing is in flight."""
        if self.state is not WorkerState.DEAD:
            self.state = WorkerState.DRAINING
        self._maybe_close_input()

    def _maybe_close_input(self) -> None:
        if self.state is WorkerState.DRAINING and not self.inflight and not self._closing_input:
            self._closing_input = True
            self._queue(encode_message(Bye()))

    def kill(self, reason: KillReason, target: int | None = None, detail: str = "") -> None:
        """SIGKILL the worker (idempotent: the first reason stays); ``target`` is the request
        held responsible."""
        if self.kill_reason is None:
            self.kill_reason = reason
            self.kill_target = target
            self.kill_detail = detail
        if self._transport is not None and self._transport.get_returncode() is None:
            # It may have exited on its own a moment ago; we then see EOF as usual.
            with contextlib.suppress(ProcessLookupError):
                self._transport.kill()

    def top(self) -> StackTop | None:
        """What the worker runs now, from its status page (racy: see the watchdog)."""
        return self._page.top() if self._page is not None and not self._exited else None

    # --- the process ------------------------------------------------------------------

    async def run(self) -> None:
        """Spawn the worker and serve it until it exits; then report through ``on_exit``."""
        try:
            if self._start_delay:
                await asyncio.sleep(self._start_delay)
            if self.kill_reason is None:
                await self._spawn()
                await self._done
        except OSError as exc:
            log.error("worker %s: cannot start: %s", self.name, exc)
            if self.kill_reason is None:
                self.kill_reason = KillReason.SPAWN_FAILED
                self.kill_detail = str(exc)
        finally:
            transport = self._transport
            if transport is not None:
                if not self._done.done():
                    self.kill(self.kill_reason or KillReason.CANCELLED)  # never leave one behind
                    await asyncio.shield(self._done)
                self.returncode = transport.get_returncode()
                transport.close()
            self._teardown()
        self._on_exit(self)

    async def _spawn(self) -> None:
        env = dict(os.environ)
        # The worker must import this very copy of the package, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
        self._page, fd = StatusPage.create()
        try:
            transport, _ = await self._loop.subprocess_exec(
                lambda: _Pipes(self),
                sys.executable,
                "-m",
                "agent.runtime.worker",
                "--memory-limit-mb",
                str(self._memory_limit_mb),
                "--status-fd",
                str(fd),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                pass_fds=(fd,),
                start_new_session=True,  # a Ctrl-C on the agent's terminal is the agent's
            )
        finally:
            os.close(fd)
        self._transport = transport
        self.pid = transport.get_pid()
        self.spawned_at = self._loop.time()
        for fd in (0, 1):
            _grow_pipe(transport.get_pipe_transport(fd))
        stdout = transport.get_pipe_transport(1)
        if stdout is not None and hasattr(stdout, "max_size"):
            # asyncio reads 256 KiB at a time, which glibc serves with an mmap/munmap pair
            # and page faults per read; a pipe never holds more than 64 KiB anyway.
            stdout.max_size = PIPE_READ_SIZE
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._stdin = stdin
        if self._out or self._batch:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _teardown(self) -> None:
        """The process is gone: salvage its spill area and stack, release everything."""
        self.state = WorkerState.DEAD
        self._exited = True
        self._out.clear()
        self._batch.clear()
        for task in self._host_tasks:
            task.cancel()  # the guest that waited for them is gone
        self._resume_writing()
        page = self._page
        if page is None:
            return
        self._page = None
        try:
            spilled = page.spilled()
            if spilled and self.inflight:
                self._salvage(spilled)
            inflight = self.inflight
            self.started = [req_id for req_id in page.stack() if req_id in inflight]
            top = page.top()
            if top is not None and top.state == RUNNING and top.req_id in inflight:
                self.guest_running = top.req_id
        finally:
            page.close()

    def _salvage(self, data: bytes) -> None:
        try:
            for body in FrameDecoder().feed(data):
                message = decode_message(body)
                # Only answers still owed: one may also have reached us through the pipe.
                if type(message) in (Result, Failure) and message.req_id in self.inflight:  # type: ignore[union-attr]
                    self._answer(message)  # type: ignore[arg-type]
        except WorkerProtocolError as exc:
            log.error("worker %s left an unreadable status page: %s", self.name, exc)

    # --- receiving (pipe callbacks) ---------------------------------------------------

    def _on_stdout(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return  # it sent garbage and is being killed
        try:
            messages = decode_frames(decoder.feed(data))
        except WorkerProtocolError as exc:
            log.error("worker %s sent garbage, killing it: %s", self.name, exc)
            self._decoder = None
            self.kill(KillReason.PROTOCOL_ERROR, detail=str(exc))
            return
        inflight = self.inflight
        for message in messages:
            if type(message) is Result:
                # The hot path, kept inline: a caller waiting for an invocation's result.
                request = inflight.pop(message.req_id, None)
                future = request.future if request is not None else None
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                else:
                    self._on_reply(self, request, message)
            elif type(message) is Failure:
                self._on_reply(self, inflight.pop(message.req_id, None), message)
            elif isinstance(message, HostCall):
                self._start_host_call(message)
            elif isinstance(message, Ready):
                if self.state is WorkerState.STARTING:
                    self.state = WorkerState.READY
                log.debug(
                    "worker %s ready (pid %d, wasm3 %s)",
                    self.name,
                    message.pid,
                    message.wasm3_version,
                )
            elif isinstance(message, Log):
                log.log(message.level, "worker %s: %s", self.name, message.text)
            else:
                self.kill(KillReason.PROTOCOL_ERROR, detail=f"unexpected {type(message).__name__}")
        self._maybe_close_input()

    def _answer(self, message: Result | Failure) -> None:
        request = self.inflight.pop(message.req_id, None)
        future = request.future if request is not None else None
        if type(message) is Result and future is not None:
            if not future.done():
                future.set_result(message)
        else:
            self._on_reply(self, request, message)

    def _pipe_closed(self, fd: int) -> None:
        self._open_pipes.discard(fd)
        if fd == 2:
            self._stderr.close()
        self._maybe_done()

    def _process_exited(self) -> None:
        self._exited = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._exited and not self._open_pipes and not self._done.done():
            self._done.set_result(None)

    def _pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def _resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- host calls -------------------------------------------------------------------

    def _start_host_call(self, call: HostCall) -> None:
        request = self.inflight.get(call.req_id)
        context = contextvars.copy_context()
        if request is not None:
            chain = (*request.chain, (self._chain_key, request.actor_id))
            context.run(CALL_CHAIN.set, chain)
        task = self._loop.create_task(self._serve_host_call(call, request), context=context)
        self._host_tasks.add(task)
        task.add_done_callback(self._host_tasks.discard)

    async def _serve_host_call(self, call: HostCall, request: Request | None) -> None:
        actor_id = request.actor_id if request is not None else ""
        remaining = (request.expires_at - self._loop.time()) if request is not None else 0.0
        error: str | None = None
        response = b""
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                response = await self._handler(
                    actor_id, call.binding, call.namespace, call.operation, call.payload
                )
            if not isinstance(response, bytes):
                raise HostCallError("the host call handler returned no bytes")
        except HostCallError as exc:
            error = str(exc)
        except TimeoutError:
            error = "host call timed out: the invocation's deadline passed"
        except Exception as exc:  # any handler failure is reported to the guest, as waPC says
            log.warning(
                "host call %s.%s from %s failed",
                call.namespace,
                call.operation,
                actor_id,
                exc_info=True,
            )
            error = str(exc) or type(exc).__name__
        if request is not None:
            if request.host_calls is None:
                request.host_calls = []
            request.host_calls.append(
                HostCallRecord(
                    call.binding,
                    call.namespace,
                    call.operation,
                    call.payload,
                    response if error is None else b"",
                    error,
                )
            )
        if self.state is not WorkerState.DEAD:
            self._queue(encode_message(HostReply(call.req_id, response, error)))


def _grow_pipe(transport: asyncio.BaseTransport | None) -> None:
    """Give a pipe PIPE_BYTES of buffer (Linux), so a burst of frames does not block."""
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size: keep the default
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _Pipes(asyncio.SubprocessProtocol):
    """Routes the subprocess transport's callbacks to its :class:`WorkerProcess`."""

    def __init__(self, worker: WorkerProcess) -> None:
        self._worker = worker

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._worker._on_stdout(data)
        else:
            self._worker._stderr.feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd != 0:
            self._worker._pipe_closed(fd)

    def process_exited(self) -> None:
        self._worker._process_exited()

    def pause_writing(self) -> None:
        self._worker._pause_writing()

    def resume_writing(self) -> None:
        self._worker._resume_writing()
