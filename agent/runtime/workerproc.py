"""The agent's handle on one sandbox worker process (used by :mod:`agent.runtime.sandbox`).

A :class:`WorkerProcess` owns the subprocess, batches outgoing frames (one pipe write per
event-loop iteration), reads replies in one loop per worker, serves the worker's host calls,
pumps its stderr into ``logging`` with a rate limit, and tracks the requests in flight in
the order they were sent. The worker answers in that order, so the oldest request in flight
is the one running. Policy (deadlines, respawn, quarantine, recycling) is the sandbox's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
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
    Log,
    Message,
    Ready,
    Result,
    decode_message,
    encode_message,
)

__all__ = ["HostCallRecord", "Request", "RequestKind", "WorkerProcess", "WorkerState"]

log = logging.getLogger("agent.runtime.sandbox")

READ_SIZE = 256 * 1024
WRITE_HIGH_WATER = 8 * 1024 * 1024  # callers wait for the pipe above this much backlog
STDERR_LINES_PER_S = 20.0
STDERR_BURST = 50
MAX_STDERR_LINE = 2000
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerState(enum.Enum):
    """Lifecycle of one worker process."""

    STARTING = "starting"  # spawned (or about to be); requests queue up until it reads them
    READY = "ready"  # sent Ready; serving
    DRAINING = "draining"  # being recycled: no new requests, exits when its queue is empty
    DEAD = "dead"  # exited or killed; its reader has finished


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
    frame: bytes  # the encoded request, kept so it can be resent to a new worker
    budget: float  # guest run time allowed once this request is the one running
    expires_at: float  # the caller's absolute deadline (event loop clock)
    future: asyncio.Future[Result] | None
    host_calls: list[HostCallRecord] | None = None
    worker: WorkerProcess | None = None  # the worker it was last sent to


class WorkerProcess:
    """One worker subprocess and the requests in flight on it.

    ``on_reply(worker, request, message)`` gets every Result/Failure (``request`` is None
    for an unknown id); ``on_exit(worker)`` runs once, after the process has exited and
    every byte of its stdout was read, with the unanswered requests still in ``inflight``.
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
    ) -> None:
        self.name = name
        self.state = WorkerState.STARTING
        self.inflight: dict[int, Request] = {}
        self.calls_sent = 0
        self.pid: int | None = None
        self.returncode: int | None = None
        self.kill_reason: str | None = None
        self.kill_target: int | None = None  # req_id running when we killed it
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.spawned_at = loop.time()
        self.progress_at = self.spawned_at  # when the running request started (host calls excluded)
        self.in_host_call = False
        self._memory_limit_mb = memory_limit_mb
        self._handler = host_call_handler
        self._on_reply = on_reply
        self._on_exit = on_exit
        self._start_delay = start_delay
        self._proc: asyncio.subprocess.Process | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closing_input = False

    # --- sending ----------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue ``request`` to the worker (it runs after everything queued before it)."""
        if not self.inflight:
            self.progress_at = self._loop.time()
        self.inflight[request.req_id] = request
        request.worker = self
        if request.kind is RequestKind.INVOKE:
            self.calls_sent += 1
        self._queue(request.frame)

    @property
    def backlogged(self) -> bool:
        """True when so much is queued for the pipe that callers should wait."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return sum(map(len, self._out)) > WRITE_HIGH_WATER
        return proc.stdin.transport.get_write_buffer_size() > WRITE_HIGH_WATER

    async def wait_writable(self) -> None:
        """Wait until the pipe to the worker has drained below its high-water mark."""
        while self.backlogged and self.state is not WorkerState.DEAD:
            proc = self._proc
            if proc is None or proc.stdin is None:
                await asyncio.sleep(0.01)
                continue
            try:
                await proc.stdin.drain()
            except (ConnectionError, OSError):
                return  # the worker died; its exit handling fails or resends the requests
            return

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled and self._proc is not None:
            # One write per loop iteration: pipelined callers share a syscall.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        proc = self._proc
        if not self._out or proc is None or proc.stdin is None or self.state is WorkerState.DEAD:
            return
        data = b"".join(self._out)
        self._out.clear()
        if not proc.stdin.is_closing():
            proc.stdin.write(data)

    def drain_and_exit(self) -> None:
        """Stop taking requests; close the worker's stdin once nothing is in flight."""
        if self.state is not WorkerState.DEAD:
            self.state = WorkerState.DRAINING
        self._maybe_close_input()

    def _maybe_close_input(self) -> None:
        if self.state is WorkerState.DRAINING and not self.inflight and not self._closing_input:
            self._closing_input = True
            self._queue(encode_message(Bye()))

    def kill(self, reason: str, target: int | None = None) -> None:
        """SIGKILL the worker (idempotent); ``target`` is the request held responsible."""
        if self.kill_reason is None:
            self.kill_reason = reason
            self.kill_target = target
        if self._proc is not None and self._proc.returncode is None:
            # It may have exited on its own a moment ago; the reader then sees EOF.
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    # --- the process ------------------------------------------------------------------

    async def run(self) -> None:
        """Spawn the worker and serve it until it exits; then report through ``on_exit``."""
        try:
            if self._start_delay:
                await asyncio.sleep(self._start_delay)
            if self.kill_reason is None:
                await self._spawn()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._pump_stderr())
                    await self._read_replies()
                self.returncode = await self._proc.wait() if self._proc else None
        except OSError as exc:
            log.error("worker %s: cannot start: %s", self.name, exc)
            if self.kill_reason is None:
                self.kill_reason = f"spawn failed: {exc}"
        finally:
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()  # cancelled mid-run: never leave a worker behind
                await asyncio.shield(self._proc.wait())
            self.state = WorkerState.DEAD
            self._out.clear()
        self._on_exit(self)

    async def _spawn(self) -> None:
        env = dict(os.environ)
        # The worker must import this very copy of the package, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.runtime.worker",
            "--memory-limit-mb",
            str(self._memory_limit_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C on the agent's terminal is the agent's to handle
        )
        self.pid = self._proc.pid
        self.spawned_at = self._loop.time()
        if self._out and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def _read_replies(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        decoder = FrameDecoder()
        while True:
            data = await stdout.read(READ_SIZE)
            if not data:
                return
            try:
                messages = [decode_message(body) for body in decoder.feed(data)]
            except WorkerProtocolError as exc:
                log.error("worker %s sent garbage, killing it: %s", self.name, exc)
                self.kill(f"protocol error: {exc}")
                continue  # keep reading until EOF so nothing is left in the pipe
            await self._dispatch(messages)

    async def _dispatch(self, messages: list[Message]) -> None:
        inflight = self.inflight
        arrived = self._loop.time()
        for message in messages:
            if type(message) is Result:
                # Answers come in order: the next request started when this one ended.
                self.progress_at = arrived
                # The hot path, kept inline: a caller waiting for an invocation's result.
                request = inflight.pop(message.req_id, None)
                future = request.future if request is not None else None
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                else:
                    self._on_reply(self, request, message)
            elif type(message) is Failure:
                self.progress_at = arrived
                self._on_reply(self, inflight.pop(message.req_id, None), message)
            elif isinstance(message, HostCall):
                await self._serve_host_call(message)
                arrived = self._loop.time()
            elif isinstance(message, Ready):
                if self.state is WorkerState.STARTING:
                    self.state = WorkerState.READY
                self.progress_at = self._loop.time()
                log.debug(
                    "worker %s ready (pid %d, wasm3 %s)",
                    self.name,
                    message.pid,
                    message.wasm3_version,
                )
            elif isinstance(message, Log):
                log.log(message.level, "worker %s: %s", self.name, message.text)
            else:
                self.kill(f"protocol error: unexpected {type(message).__name__}")
        self._maybe_close_input()

    async def _serve_host_call(self, call: HostCall) -> None:
        request = self.inflight.get(call.req_id)
        actor_id = request.actor_id if request is not None else ""
        started = self._loop.time()
        remaining = (request.expires_at - started) if request is not None else 0.0
        self.in_host_call = True
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
        finally:
            self.in_host_call = False
            # The guest waited on us: that time does not count against its run budget.
            self.progress_at += self._loop.time() - started
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
        self._queue(encode_message(HostReply(call.req_id, response, error)))

    async def _pump_stderr(self) -> None:
        """Log the worker's stderr (trap backtraces) with a token-bucket rate limit.

        It reads as fast as the worker writes: a recursion trap prints ~40k lines, and a
        worker blocked on a full stderr pipe would look hung.
        """
        assert self._proc is not None and self._proc.stderr is not None
        stderr = self._proc.stderr
        tokens, last, dropped = float(STDERR_BURST), self._loop.time(), 0
        partial = b""
        while True:
            data = await stderr.read(READ_SIZE)
            if not data:
                lines = [partial] if partial else []
            else:
                *lines, partial = (partial + data).split(b"\n")
                if len(partial) > MAX_STDERR_LINE:
                    lines.append(partial)
                    partial = b""
            now = self._loop.time()
            tokens = min(float(STDERR_BURST), tokens + (now - last) * STDERR_LINES_PER_S)
            last = now
            for raw in lines:
                if tokens < 1.0:
                    dropped += 1
                    continue
                tokens -= 1.0
                if dropped:
                    log.warning("worker %s stderr: [%d lines suppressed]", self.name, dropped)
                    dropped = 0
                text = raw[:MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
                if text:
                    log.warning("worker %s stderr: %s", self.name, text)
            if not data:
                if dropped:
                    log.warning("worker %s stderr: [%d lines suppressed]", self.name, dropped)
                return
