"""How a :class:`~agent.runtime.sandbox.Sandbox` survives its workers: the failure policy.

Split from :mod:`agent.runtime.sandbox` (the public API and the request paths) so each file
stays readable. :class:`Supervision` is a mixin the sandbox inherits; it owns

* the **watchdog**: deadline kills, judged from the worker's status page (only the request
  on top of a worker's stack runs, and only while its guest is not waiting for a host
  reply), and callers' own deadlines for requests that are still queued;
* **worker exits**: blame (:class:`InvocationTimeout` or :class:`WorkerCrashed` for the
  request that was running), collateral failures (outer requests that had started and were
  waiting for a host call), respawn with back-off, reload, and the resend of every request
  that never started;
* **quarantine**: ``quarantine_after`` strikes within ``quarantine_window_s`` keep an actor
  out for ``quarantine_expiry_s``, after which it is loaded again with the module it ran;
  :meth:`Supervision.quarantined` reports it and :meth:`Supervision.release` ends it.

Only deaths the actor caused are strikes (:func:`classify_exit`): a deadline kill of its
request, or a fault signal (SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE) or error exit while
its guest code was running, which is how a guest that breaks wasm3 or exhausts the
worker's ``RLIMIT_AS`` dies. A signal the sandbox did not send (SIGKILL from the kernel's
OOM killer or an operator, SIGTERM) blames nobody: the requests it cut off fail or are
resent as after any death, and a new worker takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.errors import (
    ActorError,
    ActorQuarantined,
    InvocationTimeout,
    LatticeEdgeError,
    WorkerCrashed,
)
from agent.runtime.statuspage import RUNNING
from agent.runtime.workerproc import (
    KillReason,
    Request,
    RequestKind,
    WorkerProcess,
    WorkerState,
)

__all__ = [
    "FAULT_SIGNALS",
    "MAX_RESENDS",
    "MAX_RESPAWN_DELAY_S",
    "STARTUP_TIMEOUT_S",
    "ExitCause",
    "QuarantineInfo",
    "SandboxState",
    "SandboxStats",
    "Slot",
    "Supervision",
    "classify_exit",
]

log = logging.getLogger("agent.runtime.sandbox")

STARTUP_TIMEOUT_S = 30.0  # Python start-up on a Pi Zero under load takes seconds
MAX_RESPAWN_DELAY_S = 5.0
MAX_RESENDS = 3  # a request whose workers keep dying before it starts fails after this
FAULT_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
)  # what a process gets for its own faults; any other signal came from outside


class ExitCause(enum.Enum):
    """Why a worker process ended, as far as blame goes (see :func:`classify_exit`)."""

    PLANNED = "planned"  # it drained and exited as asked (recycle, close) with nothing owed
    KILLED = "killed"  # the sandbox killed it: its kill_reason says why
    GUEST_FAULT = "guest fault"  # a fault signal or error exit while a guest was running
    WORKER_FAULT = "worker fault"  # the same while no guest ran: not an actor's doing
    EXTERNAL = "external"  # a signal the sandbox did not send (OOM killer, operator)


def classify_exit(
    kill_reason: KillReason | None, returncode: int | None, *, guest_running: bool, owed: bool
) -> ExitCause:
    """Why a worker ended: ``returncode`` as asyncio reports it (``-N`` for signal N),
    ``guest_running`` when its status page shows a guest executing at the end, ``owed`` when
    requests were still unanswered. Pure."""
    if kill_reason is not None:
        return ExitCause.KILLED
    if returncode is not None and returncode < 0 and -returncode not in FAULT_SIGNALS:
        return ExitCause.EXTERNAL
    if returncode == 0 and not owed:
        return ExitCause.PLANNED
    if returncode is not None and returncode != 0 and guest_running:
        return ExitCause.GUEST_FAULT
    return ExitCause.WORKER_FAULT  # a clean exit that left requests unanswered counts here


@dataclass(frozen=True, slots=True)
class QuarantineInfo:
    """Why an actor is quarantined and for how long (wall-clock seconds since the epoch)."""

    reason: str  # the error of the death that tipped it over
    since: float
    until: float  # when it is loaded again, unless released or unloaded before


@dataclass(slots=True)
class _Quarantine:
    info: QuarantineInfo
    expires_at: float  # event-loop clock
    module: bytes | None  # what it ran, loaded again at expiry (None: it never loaded)


class SandboxState(enum.Enum):
    """Lifecycle of a :class:`Sandbox`."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)
class SandboxStats:
    """Counters for monitoring and tests."""

    spawned: int = 0
    recycled: int = 0
    killed: int = 0  # deadline kills
    crashed: int = 0  # other deaths with a request running
    external: int = 0  # deaths by a signal the sandbox did not send
    resent: int = 0


@dataclass(slots=True, eq=False)
class Slot:
    """One worker slot: its current worker and the actors assigned to it."""

    index: int
    worker: WorkerProcess
    actors: dict[str, bytes] = field(default_factory=dict)  # actor id -> module bytes
    loading: int = 0
    failures: deque[float] = field(default_factory=deque)  # recent unplanned worker deaths
    standby: WorkerProcess | None = None  # started ahead of a recycle, takes over when ready


class Supervision:
    """The failure policy of a sandbox (see the module docstring); a mixin."""

    # Provided by the Sandbox.
    stats: SandboxStats
    _state: SandboxState
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event
    _deadline: float
    _load_deadline: float
    _slots: list[Slot]
    _actor_slot: dict[str, Slot]
    _live: set[WorkerProcess]
    _tg: asyncio.TaskGroup
    _strikes: dict[str, deque[float]]
    _quarantined: dict[str, _Quarantine]
    _restoring: set[str]
    _quarantine_after: int
    _quarantine_window: float
    _quarantine_expiry: float
    _on_quarantine: Callable[[str, str], None] | None
    _on_quarantine_expired: Callable[[str, str | None], None] | None

    def _spawn(self, index: int, delay: float = 0.0) -> WorkerProcess:
        raise NotImplementedError

    def _reload_into(self, slot: Slot, worker: WorkerProcess) -> None:
        raise NotImplementedError

    async def load(self, actor_id: str, wasm: bytes) -> None:
        raise NotImplementedError

    async def unload(self, actor_id: str) -> None:
        raise NotImplementedError

    def _drop(self, actor_id: str) -> None:
        slot = self._actor_slot.pop(actor_id, None)
        if slot is not None:
            slot.actors.pop(actor_id, None)

    def _on_exit(self, worker: WorkerProcess) -> None:
        self._live.discard(worker)
        for standby_of in self._slots:
            if standby_of.standby is worker:
                # It held only copies of the slot's actors: forget it, the next recycle
                # starts another one.
                standby_of.standby = None
                return
        unanswered = list(worker.inflight.values())
        worker.inflight.clear()
        slot = next((s for s in self._slots if s.worker is worker), None)
        cause = classify_exit(
            worker.kill_reason,
            worker.returncode,
            guest_running=worker.guest_running is not None,
            owed=bool(unanswered),
        )
        if cause is ExitCause.EXTERNAL:
            self.stats.external += 1
        planned = worker.kill_reason is None and not unanswered
        if planned or worker.kill_reason is KillReason.SANDBOX_CLOSED:
            if cause is ExitCause.EXTERNAL:  # nothing in flight, but an operator wants to know
                log.warning("sandbox worker %s %s", worker.name, _describe_exit(worker, cause))
            if slot is not None and self._state is SandboxState.RUNNING:
                self._respawn(slot)
            self._fail(unanswered, ActorError("the sandbox closed before the request ran"))
            return
        # The status page says exactly which requests had started (bottom of the stack
        # first); the others never ran in this worker.
        by_id = {request.req_id: request for request in unanswered}
        started = [by_id[req_id] for req_id in worker.started if req_id in by_id]
        culprit = self._culprit(worker, started)
        if culprit is not None:
            self._blame(worker, culprit, cause)  # which logs the death
        elif cause is not ExitCause.KILLED:
            log.warning("sandbox worker %s %s", worker.name, _describe_exit(worker, cause))
        for request in started:
            if request is not culprit:
                self._fail([request], self._collateral(worker, request, culprit, cause))
        if slot is not None:
            self._respawn(slot)
        never_started = [r for r in unanswered if r.req_id not in worker.started]
        if self._state is not SandboxState.RUNNING:
            self._fail(never_started, ActorError("the sandbox closed before the request ran"))
            return
        for request in never_started:
            self._resend(request)

    @staticmethod
    def _culprit(worker: WorkerProcess, started: list[Request]) -> Request | None:
        """The request that fails first-hand: the one killed for its deadline, else the top
        of the stack (the one running; whether it is to blame is the exit cause's call)."""
        if worker.kill_reason is KillReason.DEADLINE:
            return next((r for r in started if r.req_id == worker.kill_target), None)
        return started[-1] if started else None

    @staticmethod
    def _collateral(
        worker: WorkerProcess, request: Request, culprit: Request | None, cause: ExitCause
    ) -> WorkerCrashed:
        running = (
            f"{culprit.kind.value} of actor {culprit.actor_id} nested in it"
            if culprit is not None
            else "worker"
        )
        return WorkerCrashed(
            f"the {request.kind.value} of actor {request.actor_id} was waiting for a host call "
            f"when the sandbox worker died ({_describe_exit(worker, cause)}; running: the "
            f"{running})"
        )

    def _blame(self, worker: WorkerProcess, culprit: Request, cause: ExitCause) -> None:
        timed_out = (
            worker.kill_reason is KillReason.DEADLINE and worker.kill_target == culprit.req_id
        )
        what = culprit.kind.value
        if timed_out:
            self.stats.killed += 1
            error: ActorError = InvocationTimeout(
                f"{what} of actor {culprit.actor_id} ran past its {culprit.budget:g} s deadline; "
                "its worker was killed"
            )
        else:
            self.stats.crashed += 1
            error = WorkerCrashed(
                f"the sandbox worker died during a {what} of actor {culprit.actor_id} "
                f"({_describe_exit(worker, cause)})"
            )
        log.warning("%s", error)
        if culprit.future is not None and not culprit.future.done():
            culprit.future.set_exception(error)
        guest_fault = cause is ExitCause.GUEST_FAULT and worker.guest_running == culprit.req_id
        # An actor unloaded since (its caller saw the timeout first) is not struck: it is gone.
        wanted = culprit.kind is RequestKind.LOAD or culprit.actor_id in self._actor_slot
        if (timed_out or guest_fault) and wanted:  # only deaths the actor caused are strikes
            self._strike(culprit.actor_id, str(error))

    def _respawn(self, slot: Slot) -> None:
        now = self._loop.time()
        slot.failures.append(now)
        while slot.failures and now - slot.failures[0] > 10.0:
            slot.failures.popleft()
        # Back off when workers die in a row, so a broken environment cannot spin.
        delay = (
            0.0
            if len(slot.failures) <= 3
            else min(MAX_RESPAWN_DELAY_S, 0.1 * 2 ** len(slot.failures))
        )
        if slot.standby is not None:
            # A warm worker with the slot's actors is at hand (mid-recycle): it takes over.
            slot.worker, slot.standby = slot.standby, None
            return
        slot.worker = self._spawn(slot.index, delay)
        self._reload_into(slot, slot.worker)

    def _resend(self, request: Request) -> None:
        if request.future is None:
            if request.kind is not RequestKind.INVOKE:
                return  # the new worker was given the slot's current actors already
        elif request.future.done():
            return  # the caller gave up (deadline); running it now would help nobody
        if request.actor_id in self._quarantined:
            self._fail([request], ActorQuarantined(f"actor {request.actor_id} is quarantined"))
            return
        request.resends += 1
        if request.resends > MAX_RESENDS:
            # Its workers died before it could start, again and again (or we could not tell).
            self._fail(
                [request],
                WorkerCrashed(
                    f"{request.kind.value} of actor {request.actor_id} was not run: "
                    f"{MAX_RESENDS + 1} workers died before it could start"
                ),
            )
            return
        self.stats.resent += 1
        self._slots[request.slot].worker.submit(request)

    def _fail(self, requests: list[Request], error: ActorError) -> None:
        for request in requests:
            if request.future is not None and not request.future.done():
                request.future.set_exception(error)

    # --- quarantine -------------------------------------------------------------------

    def quarantined(self) -> Mapping[str, QuarantineInfo]:
        """The quarantined actors: why, since when and until when (a snapshot)."""
        now = self._loop.time() if self._state is not SandboxState.NEW else 0.0
        return {
            actor_id: record.info
            for actor_id, record in self._quarantined.items()
            if now < record.expires_at
        }

    def release(self, actor_id: str) -> bool:
        """End ``actor_id``'s quarantine now, so that it may be loaded again.

        Returns False when it was not quarantined. The actor is not loaded here: the caller
        loads the module it wants (the one it ran, or a new one), as scale and update do.
        Its strikes are forgotten too.
        """
        self._strikes.pop(actor_id, None)
        record = self._quarantined.pop(actor_id, None)
        if record is None:
            return False
        log.warning("quarantine of actor %s released", actor_id)
        return True

    def _strike(self, actor_id: str, reason: str) -> None:
        now = self._loop.time()
        strikes = self._strikes.setdefault(actor_id, deque())
        strikes.append(now)
        while strikes and now - strikes[0] > self._quarantine_window:
            strikes.popleft()
        if len(strikes) < self._quarantine_after:
            return
        count = len(strikes)
        del self._strikes[actor_id]  # a quarantine that ends starts a clean count
        slot = self._actor_slot.get(actor_id)
        module = slot.actors.get(actor_id) if slot is not None else None
        wall = time.time()
        info = QuarantineInfo(reason, wall, wall + self._quarantine_expiry)
        self._quarantined[actor_id] = _Quarantine(info, now + self._quarantine_expiry, module)
        self._drop(actor_id)
        log.error(
            "actor %s quarantined for %g s after %d worker deaths it caused: %s",
            actor_id, self._quarantine_expiry, count, reason,
        )  # fmt: skip
        self._notify(self._on_quarantine, actor_id, reason)

    def _quarantine_of(self, actor_id: str) -> _Quarantine | None:
        """The actor's quarantine while it lasts (expired ones end at the next tick)."""
        record = self._quarantined.get(actor_id)
        return record if record is not None and self._loop.time() < record.expires_at else None

    def _expire_quarantines(self, now: float) -> None:
        for actor_id, record in list(self._quarantined.items()):
            if now < record.expires_at:
                continue
            del self._quarantined[actor_id]
            if record.module is None or self._state is not SandboxState.RUNNING:
                log.warning("quarantine of actor %s expired; it may be loaded again", actor_id)
                self._notify(self._on_quarantine_expired, actor_id, None)
                continue
            log.warning("quarantine of actor %s expired; loading it again", actor_id)
            self._restoring.add(actor_id)
            self._tg.create_task(
                self._restore(actor_id, record.module), name=f"sandbox-restore-{actor_id}"
            )

    async def _restore(self, actor_id: str, module: bytes) -> None:
        """Load an actor whose quarantine expired; a failure is logged and reported."""
        error: str | None = None
        try:
            await self.load(actor_id, module)
            if actor_id not in self._restoring:  # unloaded meanwhile: it is not wanted
                await self.unload(actor_id)
        except LatticeEdgeError as exc:
            error = str(exc)
            log.error("actor %s could not be loaded after its quarantine: %s", actor_id, exc)
        except Exception as exc:  # a bug here must not take the sandbox's task group down
            error = f"internal error: {type(exc).__name__}"
            log.exception("loading actor %s after its quarantine failed", actor_id)
        finally:
            self._restoring.discard(actor_id)
        self._notify(self._on_quarantine_expired, actor_id, error)

    @staticmethod
    def _notify(callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a broken callback must not break the sandbox
            log.exception("sandbox callback %r failed", callback)

    # --- deadlines -------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Enforce deadlines (kill workers whose running request is over budget) and end
        quarantines that expired."""
        tick = max(0.005, min(0.1, min(self._deadline, self._load_deadline) / 10))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)
            now = self._loop.time()
            for worker in list(self._live):
                self._check(worker, now)
            if self._quarantined:
                self._expire_quarantines(now)

    def _check(self, worker: WorkerProcess, now: float) -> None:
        if worker.state is WorkerState.DEAD or worker.kill_reason is not None:
            return
        if worker.state is WorkerState.STARTING:
            if now - worker.spawned_at > STARTUP_TIMEOUT_S:
                worker.kill(KillReason.STARTUP_TIMEOUT)
            return
        # Only the top of the worker's stack runs, and only while its guest is not waiting
        # for a host reply. A kill needs two identical readings a tick apart: a reading
        # torn by a concurrent update can never match the next one.
        top = worker.top()
        seen, worker.last_seen = worker.last_seen, top
        if top is not None and top.state == RUNNING and top == seen:
            head = worker.inflight.get(top.req_id)
            if head is not None and top.spent + (now - top.since) > head.budget:
                worker.kill(KillReason.DEADLINE, head.req_id)
                if head.future is not None and not head.future.done():
                    head.future.set_exception(
                        InvocationTimeout(
                            f"actor {head.actor_id} ran past its {head.budget:g} s deadline; "
                            "its worker was killed"
                        )
                    )
        for request in worker.inflight.values():
            future = request.future
            if future is not None and now > request.expires_at and not future.done():
                future.set_exception(
                    InvocationTimeout(
                        f"request to actor {request.actor_id} waited past its "
                        f"{request.budget:g} s deadline behind other requests"
                    )
                )


def _describe_exit(worker: WorkerProcess, cause: ExitCause) -> str:
    reason = worker.kill_reason
    if reason is not None:
        return f"killed: {reason.value}" + (
            f" ({worker.kill_detail})" if worker.kill_detail else ""
        )
    code = worker.returncode
    if code is None:
        how = "exit status unknown"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        how = f"killed by signal {-code} ({name})"
    else:
        how = f"exit code {code}"
    if cause is ExitCause.EXTERNAL:
        return (
            f"{how}, which the sandbox did not send: the kernel's OOM killer or another "
            "process; no actor is blamed"
        )
    if cause is ExitCause.GUEST_FAULT:
        return f"{how} while its guest code ran"
    if cause is ExitCause.WORKER_FAULT:
        return f"{how} while no guest code ran; no actor is blamed"
    return how
