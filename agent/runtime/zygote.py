"""Cheap sandbox worker start-ups: the agent's side of the worker zygote.

A Python start-up (interpreter, msgpack, wasm3 and the worker module) costs tens of
milliseconds of CPU on a PC and seconds on a Pi Zero, and the sandbox pays it for every
recycle and respawn. A :class:`Zygote` is one ``python -m agent.runtime.worker --zygote``
process per sandbox that has done those imports once and forks a fresh worker on request
(see :func:`agent.runtime.worker.zygote`). The agent makes the worker's pipes and status page
and passes them over a SOCK_SEQPACKET socket (SCM_RIGHTS); the zygote answers with the pid.
The zygote never loads a module, so every worker starts clean, and forked workers share its
pages copy-on-write.

The worker is cloned with ``CLONE_PARENT``: it is the agent's child, just like a spawned
one. :class:`ForkedTransport` watches it through a pidfd, reaps it, and presents it and its
pipes to :class:`~agent.runtime.workerproc.WorkerProcess` as the subprocess transport that
``loop.subprocess_exec`` would have given. A zygote that dies is started again on the next
request; while it cannot be, workers are spawned the plain way (the caller falls back on
:class:`OSError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = ["SUPPORTED", "ForkedTransport", "Zygote", "worker_env"]

log = logging.getLogger("agent.runtime.sandbox")

SUPPORTED = (
    sys.platform.startswith("linux")
    and platform.machine() in ("x86_64", "aarch64", "arm64", "riscv64")
    and hasattr(os, "pidfd_open")
    and hasattr(socket, "send_fds")
)
START_TIMEOUT_S = 30.0  # a Python start-up on a Pi Zero under load takes seconds
MAX_FAILED_STARTS = 3  # after this many zygotes that would not start, spawn plainly
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def worker_env() -> dict[str, str]:
    """The environment of a worker (or zygote): it must import this very package copy."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
    return env


class Zygote:
    """One zygote process, started on first use and again after it died."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._failed_starts = 0
        self._closed = False
        self.forks = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs (for monitoring and tests)."""
        return self._process.pid if self._process is not None else None

    async def fork(self, fds: tuple[int, int, int, int], memory_limit_mb: int) -> int:
        """A new worker on ``fds`` (stdin, stdout, stderr, status page); its pid.

        Raises OSError when no zygote can do it (the caller then spawns the worker itself).
        """
        async with self._lock:
            if self._closed or self._failed_starts >= MAX_FAILED_STARTS:
                raise OSError("no zygote")
            if self._control is None:
                await self._start()
            control = self._control
            assert control is not None
            loop = asyncio.get_running_loop()
            try:
                socket.send_fds(control, [str(memory_limit_mb).encode()], list(fds))
                answer = await asyncio.wait_for(loop.sock_recv(control, 64), START_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                await self._stop()
                raise OSError(f"the worker zygote failed: {exc}") from None
            except BaseException:
                self._abandon()  # cancelled mid-request: its answer must not reach the next
                raise
            if not answer:
                await self._stop()
                raise OSError("the worker zygote died")
            pid = int(answer)
            if pid <= 0:
                raise OSError(-pid, f"the worker zygote cannot fork: {os.strerror(-pid)}")
            self.forks += 1
            return pid

    async def spawn(
        self, protocol: asyncio.SubprocessProtocol, page_fd: int, memory_limit_mb: int
    ) -> ForkedTransport | None:
        """A forked worker with fresh pipes, or None when no zygote can make one."""
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        ours = [stdin_w, stdout_r, stderr_r]
        try:
            try:
                pid = await self.fork((stdin_r, stdout_w, stderr_w, page_fd), memory_limit_mb)
            finally:
                for fd in (stdin_r, stdout_w, stderr_w):
                    os.close(fd)  # the worker has its own copies now
            transport = ForkedTransport(pid, protocol)
            ours.clear()  # the transport owns them from here
            try:
                await transport.connect(stdin_w, stdout_r, stderr_r)
            except OSError:
                transport.close()  # kills the worker; its exit is still reaped
                raise
            return transport
        except OSError as exc:
            log.warning("no worker from the zygote (%s): spawning one", exc)
            return None
        finally:
            for fd in ours:
                os.close(fd)

    async def close(self) -> None:
        """Stop the zygote (workers it forked are the agent's and are not affected)."""
        async with self._lock:
            self._closed = True
            await self._stop()

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent.runtime.worker",
                "--zygote",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                env=worker_env(),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError:
            ours.close()
            self._failed_starts += 1
            raise
        finally:
            theirs.close()
        self._process, self._control = process, ours
        loop = asyncio.get_running_loop()
        try:
            ready = await asyncio.wait_for(loop.sock_recv(ours, 64), START_TIMEOUT_S)
        except (OSError, TimeoutError):
            ready = b""
        if ready != b"ready":
            self._failed_starts += 1
            await self._stop()
            raise OSError("the worker zygote did not start")
        self._failed_starts = 0
        self.starts += 1
        log.debug("worker zygote started (pid %d)", process.pid)

    def _abandon(self) -> None:
        control, self._control = self._control, None
        process, self._process = self._process, None
        if control is not None:
            control.close()
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # asyncio's child watcher still reaps it

    async def _stop(self) -> None:
        control, self._control = self._control, None
        process, self._process = self._process, None
        if control is not None:
            control.close()  # EOF: the zygote exits
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


class ForkedTransport(asyncio.SubprocessTransport):
    """A forked worker and its pipes, seen through the SubprocessTransport interface."""

    def __init__(self, pid: int, protocol: asyncio.SubprocessProtocol) -> None:
        super().__init__()
        self._pid = pid
        self._protocol = protocol
        self._returncode: int | None = None
        self._pipes: dict[int, asyncio.BaseTransport] = {}
        self._pidfd = os.pidfd_open(pid)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._pidfd, self._on_exit)

    async def connect(self, stdin: int, stdout: int, stderr: int) -> None:
        """Attach the agent's ends of the worker's pipes (the transport owns them now)."""
        loop, protocol = self._loop, self._protocol
        write, _ = await loop.connect_write_pipe(
            lambda: _PipeProtocol(protocol, 0), os.fdopen(stdin, "wb", buffering=0)
        )
        self._pipes[0] = write
        for fd, number in ((stdout, 1), (stderr, 2)):
            read, _ = await loop.connect_read_pipe(
                lambda n=number: _PipeProtocol(protocol, n),  # type: ignore[misc]
                os.fdopen(fd, "rb", buffering=0),
            )
            self._pipes[number] = read

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the status is lost
            pid, status = self._pid, 255 << 8
        if pid == 0:
            self._loop.add_reader(self._pidfd, self._on_exit)  # spurious wake-up
            return
        self._returncode = os.waitstatus_to_exitcode(status)
        os.close(self._pidfd)
        self._pidfd = -1
        self._protocol.process_exited()

    def get_pid(self) -> int:
        return self._pid

    def get_returncode(self) -> int | None:
        return self._returncode

    def get_pipe_transport(self, fd: int) -> Any:
        return self._pipes.get(fd)

    def send_signal(self, signal: int) -> None:
        if self._returncode is not None or self._pidfd < 0:
            raise ProcessLookupError(self._pid)
        # Through the pidfd: the worker is unreaped until _on_exit, but this is exact anyway.
        _pidfd_send_signal(self._pidfd, signal)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        for pipe in self._pipes.values():
            pipe.close()
        if self._pidfd >= 0 and self._returncode is None:
            # Closed before it exited (the agent is going away): kill it and let it go.
            with contextlib.suppress(ProcessLookupError):
                self.kill()

    def is_closing(self) -> bool:
        return all(pipe.is_closing() for pipe in self._pipes.values())


def _pidfd_send_signal(pidfd: int, number: int) -> None:
    signal.pidfd_send_signal(pidfd, number)


class _PipeProtocol(asyncio.Protocol):
    """Forwards one pipe's callbacks to the worker's SubprocessProtocol, tagged with its fd."""

    def __init__(self, protocol: asyncio.SubprocessProtocol, fd: int) -> None:
        self._protocol = protocol
        self._fd = fd

    def data_received(self, data: bytes) -> None:
        self._protocol.pipe_data_received(self._fd, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.pipe_connection_lost(self._fd, exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()
