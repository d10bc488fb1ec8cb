"""Supervising the nats-server leaf node: start, readiness, log pumping, restart, stop.

The child runs in its own session (a Ctrl-C in the terminal reaches the agent, which then
stops the leaf in order) and gets SIGTERM from the kernel if the agent dies, so a
``kill -9`` of the agent leaves no nats-server behind holding the ports. Its stdout and
stderr are always read, line by line, into our logging with repeats rate-limited: an
unreachable upstream makes nats-server log an error every second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import enum
import json
import logging
import os
import random
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.config import HostPort
from agent.errors import LeafStartError
from agent.fsutil import write_atomic
from agent.leaf.binary import NatsServer
from agent.leaf.monitor import MonitorError, get_json

__all__ = ["Backoff", "LeafState", "LeafSupervisor", "LogPump"]

logger = logging.getLogger("lattice_edge.leaf")
server_log = logging.getLogger("lattice_edge.leaf.nats_server")


class LeafState(enum.Enum):
    """Lifecycle of the supervised nats-server."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``initial`` doubling up to ``maximum``, each with ±``jitter``.

    The delay resets once a start has stayed healthy for ``stable_after`` seconds, so a
    leaf that crashes now and then is back within a second, while one that dies right
    after starting (a bad config, a port taken) still backs off.
    """

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 3.0
    jitter: float = 0.2

    def next(self, delay: float) -> float:
        """The delay after ``delay``."""
        return min(delay * 2, self.maximum)

    def jittered(self, delay: float) -> float:
        """``delay`` spread by the jitter, so a fleet's leaves do not restart in step."""
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)


_LEVEL = re.compile(r"\[(TRC|DBG|INF|WRN|ERR|FTL)\]\s?(.*)$")
_LEVELS = {
    "TRC": logging.DEBUG,
    "DBG": logging.DEBUG,
    "INF": logging.DEBUG,  # start-up banners; the supervisor reports what matters at INFO
    "WRN": logging.WARNING,
    "ERR": logging.ERROR,
    "FTL": logging.ERROR,
}


# Lines nats-server logs as warnings that are expected with our config: the anonymous
# local user has no password by design, and the readiness probe may ask before it is up.
_EXPECTED = (
    re.compile(r"^Plaintext passwords detected"),
    re.compile(r"^Healthcheck failed: .*failed to be ready for connections"),
)


class LogPump:
    """Turns nats-server output lines into log records, rate-limiting repeats.

    Lines that differ only in numbers (ports, attempt counters, timestamps) count as the
    same line: the first is logged, repeats within ``window`` seconds are counted and
    reported with the next one that gets through. On top of that at most ``burst`` lines
    of any kind pass per ``window``: a local client can make nats-server log a permission
    violation per subject it tries, and those subjects all differ.
    """

    def __init__(
        self,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        burst: int = 60,
    ):
        self.window = window
        self.clock = clock
        self.burst = burst
        self.recent: collections.deque[str] = collections.deque(maxlen=30)
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._passed: collections.deque[float] = collections.deque()
        self._over_burst = 0

    def feed(self, raw: bytes) -> tuple[int, str] | None:
        """Classify one line; return (level, message) to log, or None when suppressed."""
        text = raw.decode("utf-8", "replace").rstrip()
        if not text:
            return None
        match = _LEVEL.search(text)
        level_name, message = (match.group(1), match.group(2)) if match else ("INF", text)
        if any(expected.search(message) for expected in _EXPECTED):
            level_name = "DBG"
        if level_name in ("ERR", "FTL", "WRN"):
            self.recent.append(f"[{level_name}] {message}")
        key = re.sub(r"\d+", "#", f"{level_name} {message}")
        now = self.clock()
        last = self._last_logged.get(key)
        if last is not None and now - last < self.window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        while self._passed and now - self._passed[0] >= self.window:
            self._passed.popleft()
        if len(self._passed) >= self.burst:
            self._over_burst += 1
            return None
        if len(self._last_logged) > 256:  # bound memory against endlessly varying lines
            self._last_logged.clear()
        self._last_logged[key] = now
        self._passed.append(now)
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += f" ({skipped} similar lines suppressed)"
        if self._over_burst:
            message += f" ({self._over_burst} other lines suppressed: too many at once)"
            self._over_burst = 0
        return _LEVELS[level_name], message

    def last_error(self) -> str | None:
        """The most recent fatal or error line, for start-up failure messages."""
        for line in reversed(self.recent):
            if line.startswith(("[FTL]", "[ERR]")):
                return line
        return None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the
    # agent dies, so nats-server never outlives it (PR_SET_PDEATHSIG = 1).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class LeafSupervisor:
    """Runs one nats-server child: start, wait until ready, restart on death, stop.

    Background tasks (output pumps, the watcher) are created in the task group passed to
    :meth:`start`, so they belong to the host's structure and end with it.
    """

    def __init__(
        self,
        server: NatsServer,
        config_path: Path,
        *,
        monitor: HostPort,
        server_name: str,
        ready_timeout: float,
        pid_file: Path,
        env: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.server = server
        self.config_path = config_path
        self.monitor = monitor
        self.server_name = server_name
        self.ready_timeout = ready_timeout
        self.pid_file = pid_file
        self.env = dict(os.environ if env is None else env)
        self.backoff = backoff or Backoff()
        self.state = LeafState.STOPPED
        self.restarts = 0
        self.pump = LogPump()
        # Called with every output line, before rate limiting (the forwarder watches the
        # uplink through them); a hook must be quick and must not raise.
        self.line_hooks: list[Callable[[str], None]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._planned_restart = False
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The running child's pid, if any."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """Start nats-server, wait until it is ready, then watch it from ``tasks``."""
        self._stopping = False
        await asyncio.to_thread(self._stop_stale_child)  # psutil waits up to 5 s
        await self._launch(tasks)
        self._watcher = tasks.create_task(self._watch(tasks), name="leaf-watch")

    async def _launch(self, tasks: asyncio.TaskGroup) -> None:
        self.state = LeafState.STARTING
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.server.path),
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise LeafStartError(f"cannot start {self.server.path}: {exc}") from exc
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        tasks.create_task(self._pump_output(proc.stdout), name="leaf-stdout")
        tasks.create_task(self._pump_output(proc.stderr), name="leaf-stderr")
        try:
            await self._wait_ready(proc)
        except BaseException:
            await self._terminate(proc)
            raise
        self._started_at = time.monotonic()
        write_atomic(self.pid_file, f"{proc.pid}\n".encode())
        self.state = LeafState.RUNNING
        self._ready.set()
        logger.info(
            "nats-server %s ready (pid %d, monitoring on %s)",
            self.server.version_text,
            proc.pid,
            self.monitor,
        )

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pause = 0.02
        while True:
            if proc.returncode is not None:
                await asyncio.sleep(0.05)  # let the pumps read the fatal line
                reason = self.pump.last_error() or "no error was logged"
                raise LeafStartError(
                    f"nats-server exited during start-up (code {proc.returncode}): {reason}"
                )
            if await self._is_ours_and_healthy():
                return
            if time.monotonic() > deadline:
                reason = self.pump.last_error() or f"no answer on http://{self.monitor}/healthz"
                raise LeafStartError(
                    f"nats-server was not ready within {self.ready_timeout:g} s: {reason}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), pause)
            pause = min(pause * 2, 0.25)

    async def _is_ours_and_healthy(self) -> bool:
        # Another server on the same monitoring port must not pass for ours.
        try:
            status, varz = await get_json(self.monitor, "/varz", timeout=1.0)
            if status != 200 or not isinstance(varz, dict):
                return False
            if varz.get("server_name") != self.server_name:
                return False
            status, _ = await get_json(self.monitor, "/healthz", timeout=1.0)
        except MonitorError:
            return False
        return status == 200 and await self._client_port_is_ours(varz)

    async def _client_port_is_ours(self, varz: dict[str, object]) -> bool:
        """Whether the client listener answers with our server's INFO.

        nats-server serves monitoring (and a healthy ``/healthz``) before it binds the
        client port, so a taken port would pass for ready and the server would exit a
        moment later: we call it ready only once our own INFO comes back on that port.
        """
        host, port = varz.get("host"), varz.get("port")
        if not isinstance(host, str) or not isinstance(port, int):
            return True  # no client listener advertised: nothing more to check
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(host, port, limit=2**16)
                line = await reader.readline()
        except (OSError, TimeoutError, ValueError):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if not line.startswith(b"INFO "):
            return False
        try:
            info = json.loads(line[5:])
        except ValueError:
            return False
        return isinstance(info, dict) and info.get("server_name") == self.server_name

    async def _pump_output(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream limit: skip the rest
                continue
            if not line:
                return
            if self.line_hooks:
                text = line.decode("utf-8", "replace")
                for hook in self.line_hooks:
                    try:
                        hook(text)
                    except Exception:  # a hook's bug must not stop the pump
                        logger.exception("a leaf output hook failed")
            record = self.pump.feed(line)
            if record is not None:
                server_log.log(record[0], "%s", record[1])

    async def _watch(self, tasks: asyncio.TaskGroup) -> None:
        delay = self.backoff.initial
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            if time.monotonic() - self._started_at >= self.backoff.stable_after:
                delay = self.backoff.initial
            self.state = LeafState.RESTARTING
            pause = self.backoff.jittered(delay)
            if self._planned_restart:
                self._planned_restart = False
                pause = 0.0
                logger.info("restarting nats-server (pid %d) with its new config", proc.pid)
            else:
                logger.warning(
                    "nats-server (pid %d) exited unexpectedly with code %s; restarting in ~%.1f s",
                    proc.pid,
                    code,
                    pause,
                )
            while True:
                await asyncio.sleep(pause)
                delay = self.backoff.next(delay)  # a start that dies young waits longer next
                try:
                    await self._launch(tasks)
                except LeafStartError as exc:
                    pause = self.backoff.jittered(delay)
                    logger.error("%s; retrying in ~%.1f s", exc, pause)
                    continue
                self.restarts += 1
                break

    async def restart(self) -> None:
        """Restart nats-server so it reads its config file again (a new upstream URL or
        credentials: a leafnode remote cannot be changed by a config reload).

        Local clients, the agent among them, reconnect on their own; the watcher starts the
        new process at once and keeps retrying with backoff should it fail to start.
        """
        proc = self._proc
        if self._stopping or self._watcher is None or proc is None or proc.returncode is not None:
            raise LeafStartError("the leaf node is not running")
        self._planned_restart = True
        self._ready.clear()
        await self._terminate(proc, lame_duck=False)
        try:
            await asyncio.wait_for(self._ready.wait(), self.ready_timeout * 2)
        except TimeoutError:
            raise LeafStartError("nats-server did not come back after a restart") from None

    async def stop(self) -> None:
        """Lame-duck the server, then SIGTERM, then SIGKILL; idempotent."""
        self._stopping = True
        self.state = LeafState.STOPPING
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._proc is not None:
            await self._terminate(self._proc)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self.state = LeafState.STOPPED

    async def _terminate(self, proc: asyncio.subprocess.Process, *, lame_duck: bool = True) -> None:
        # Lame duck first: with no clients left it exits after its 1 s grace period. A
        # restart skips it: the agent is still connected and would be evicted slowly.
        steps = ((signal.SIGUSR2, 5.0),) if lame_duck else ()
        for sig, wait in (*steps, (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), wait)
        if proc.returncode is None:
            logger.error("nats-server (pid %d) survived SIGKILL", proc.pid)

    def _stop_stale_child(self) -> None:
        """Stop a nats-server left by an earlier agent that died with our config."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        import psutil  # only needed on this rare path

        try:
            process = psutil.Process(pid)
            if str(self.config_path) not in process.cmdline():
                return
            logger.warning("stopping nats-server pid %d left by an earlier run", pid)
            process.terminate()
            process.wait(5)
        except psutil.TimeoutExpired:
            with contextlib.suppress(psutil.Error):
                process.kill()
        except psutil.Error:
            return
