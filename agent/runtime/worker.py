"""The sandbox worker process: ``python -m agent.runtime.worker --memory-limit-mb N``.

The agent (:mod:`agent.runtime.sandbox`) starts it as a plain subprocess so it inherits
none of the agent's state. It speaks :mod:`agent.runtime.protocol` frames: requests on
stdin, replies on stdout; stderr is left to wasm3, which prints trap backtraces there, and
the agent captures it. It holds several actors, one :class:`~agent.runtime.wapc.WapcInstance`
each, and answers requests strictly in the order they arrive. When a guest makes a host call
the worker sends a :class:`~agent.runtime.protocol.HostCall` and blocks until the agent's
:class:`~agent.runtime.protocol.HostReply` arrives; requests that arrive meanwhile wait.

Before running any guest it caps its address space (``RLIMIT_AS``), ignores SIGINT (the
agent decides when workers stop) and asks Linux to SIGKILL it if the agent dies. Imports
are kept to the minimum: start-up is a hot path on a Pi Zero.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque

from agent.errors import LatticeEdgeError
from agent.runtime.protocol import (
    Bye,
    Failure,
    FrameDecoder,
    HostCall,
    HostReply,
    Invoke,
    Load,
    Message,
    Ready,
    Result,
    Unload,
    decode_message,
    encode_message,
    encode_result,
    error_to_wire,
)

__all__ = ["Worker", "main"]

READ_SIZE = 256 * 1024
_PR_SET_PDEATHSIG = 1


class _AgentGone(BaseException):
    """stdin closed while a guest waited for a host reply: unwind everything and exit.

    A BaseException so that the waPC host's "report host-call failures to the guest"
    handler does not catch it.
    """


class Worker:
    """The request loop of one worker process (see the module docstring)."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        # Imported here so ``--help`` and argument errors stay cheap.
        from agent.runtime.wapc import WapcInstance

        self._instance_cls = WapcInstance
        self._in = in_fd
        self._out = out_fd
        self._decoder = FrameDecoder()
        self._inbox: deque[Message] = deque()
        self._replies: dict[int, HostReply] = {}
        self._pending: list[bytes] = []
        self._actors: dict[str, WapcInstance] = {}
        self._current = 0  # req_id of the request a guest is running, for its host calls

    def run(self) -> int:
        """Serve requests until stdin closes or :class:`Bye` arrives; return the exit code."""
        import wasm3

        self._send(Ready(os.getpid(), str(wasm3.M3_VERSION)))
        while True:
            message = self._next()
            if message is None or isinstance(message, Bye):
                self._flush()
                return 0
            if isinstance(message, Invoke):
                self._invoke(message)
            elif isinstance(message, Load):
                self._load(message)
            elif isinstance(message, Unload):
                self._actors.pop(message.actor_id, None)
                self._send(Result(message.req_id, b"", ()))
            else:
                # Only the agent writes here; anything else means the pipe is corrupt.
                raise SystemExit(f"worker: unexpected message {type(message).__name__}")

    # --- requests ---------------------------------------------------------------------

    def _invoke(self, message: Invoke) -> None:
        instance = self._actors.get(message.actor_id)
        if instance is None:
            self._send(
                Failure(message.req_id, "ActorError", f"actor {message.actor_id} is not loaded", ())
            )
            return
        # Never hold a finished reply while another guest runs: if this one hangs and the
        # agent kills us, every request answered so far must have reached the agent.
        if self._pending:
            self._flush()
        self._current = message.req_id
        try:
            response = instance.invoke(message.operation, message.payload)
        except LatticeEdgeError as exc:
            self._send(
                Failure(message.req_id, error_to_wire(exc), str(exc), instance.take_console())
            )
        else:
            self._pending.append(encode_result(message.req_id, response, instance.take_console()))

    def _load(self, message: Load) -> None:
        if self._pending:
            self._flush()
        self._current = message.req_id
        actor_id = message.actor_id
        self._actors.pop(actor_id, None)

        def host_call(binding: str, namespace: str, operation: str, payload: bytes) -> bytes:
            return self._host_call(binding, namespace, operation, payload)

        try:
            instance = self._instance_cls(
                message.wasm, host_call=host_call, stack_bytes=message.stack_bytes
            )
        except LatticeEdgeError as exc:
            self._send(Failure(message.req_id, error_to_wire(exc), str(exc), ()))
            return
        self._actors[actor_id] = instance
        self._send(Result(message.req_id, b"", instance.take_console()))

    def _host_call(self, binding: str, namespace: str, operation: str, payload: bytes) -> bytes:
        req_id = self._current
        self._send(HostCall(req_id, binding, namespace, operation, payload))
        self._flush()
        while req_id not in self._replies:
            if not self._read_more():
                raise _AgentGone
        reply = self._replies.pop(req_id)
        if reply.error is not None:
            raise _HostError(reply.error)
        return reply.payload

    # --- framing ----------------------------------------------------------------------

    def _next(self) -> Message | None:
        while not self._inbox:
            if not self._read_more():
                return None
        return self._inbox.popleft()

    def _read_more(self) -> bool:
        self._flush()  # whatever we owe the agent goes out before we block
        data = os.read(self._in, READ_SIZE)
        if not data:
            return False
        for body in self._decoder.feed(data):
            message = decode_message(body)
            if isinstance(message, HostReply):
                self._replies[message.req_id] = message
            else:
                self._inbox.append(message)
        return True

    def _send(self, message: Message) -> None:
        self._pending.append(encode_message(message))

    def _flush(self) -> None:
        if not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending.clear()
        while data:
            written = os.write(self._out, data)
            data = data[written:]


class _HostError(Exception):
    """The agent reported a failed host call; the waPC host hands its text to the guest."""


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``--memory-limit-mb``, harden the process, serve until EOF."""
    args = sys.argv[1:] if argv is None else argv
    limit = 0
    if len(args) == 2 and args[0] == "--memory-limit-mb" and args[1].isdigit():
        limit = int(args[1])
    elif args:
        print("usage: python -m agent.runtime.worker [--memory-limit-mb N]", file=sys.stderr)
        return 2
    _harden(limit)
    in_fd, out_fd = _private_pipes()
    try:
        return Worker(in_fd, out_fd).run()
    except (_AgentGone, BrokenPipeError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
