"""How a :class:`~agent.runtime.sandbox.Sandbox` survives its workers: the failure policy.

Split from :mod:`agent.runtime.sandbox` (the public API and the request paths) so each file
stays readable. :class:`Supervision` is a mixin the sandbox inherits; it owns

* the **watchdog**: deadline kills, judged from the worker's status page (only the request
  on top of a worker's stack runs, and only while its guest is not waiting for a host
  reply), and callers' own deadlines for requests that are still queued;
* **worker exits**: blame (:class:`InvocationTimeout` or :class:`WorkerCrashed` for the
  request that was running, a strike towards quarantine), collateral failures (outer
  requests that had started and were waiting for a host call), respawn with back-off,
  reload, and the resend of every request that never started;
* **quarantine**: ``quarantine_after`` strikes within ``quarantine_window_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import ActorError, ActorQuarantined, InvocationTimeout, WorkerCrashed
from agent.runtime.statuspage import RUNNING
from agent.runtime.workerproc import Request, RequestKind, WorkerProcess, WorkerState

__all__ = [
    "MAX_RESENDS",
    "MAX_RESPAWN_DELAY_S",
    "STARTUP_TIMEOUT_S",
    "SandboxState",
    "SandboxStats",
    "Slot",
    "Supervision",
]

log = logging.getLogger("agent.runtime.sandbox")

STARTUP_TIMEOUT_S = 30.0  # Python start-up on a Pi Zero under load takes seconds
MAX_RESPAWN_DELAY_S = 5.0
MAX_RESENDS = 3  # a request whose workers keep dying before it starts fails after this


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
    killed: int = 0
    crashed: int = 0
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
    _strikes: dict[str, deque[float]]
    _quarantined: dict[str, str]
    _quarantine_after: int
    _quarantine_window: float
    _on_quarantine: Callable[[str, str], None] | None

    def _spawn(self, index: int, delay: float = 0.0) -> WorkerProcess:
        raise NotImplementedError

    def _reload_into(self, slot: Slot, worker: WorkerProcess) -> None:
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
        planned = worker.kill_reason is None and not unanswered
        if planned or worker.kill_reason == "sandbox closed":
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
            self._blame(worker, culprit)
        for request in started:
            if request is not culprit:
                self._fail([request], self._collateral(worker, request, culprit))
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
        if worker.kill_reason == "deadline":
            return next((r for r in started if r.req_id == worker.kill_target), None)
        return started[-1] if started else None  # the top of the stack was the one running

    @staticmethod
    def _collateral(
        worker: WorkerProcess, request: Request, culprit: Request | None
    ) -> WorkerCrashed:
        cause = (
            f"{culprit.kind.value} of actor {culprit.actor_id} running nested in it"
            if culprit is not None
            else "worker"
        )
        return WorkerCrashed(
            f"the {request.kind.value} of actor {request.actor_id} was waiting for a host call "
            f"when the sandbox worker died ({_describe_exit(worker)}; cause: the {cause})"
        )

    def _blame(self, worker: WorkerProcess, culprit: Request) -> None:
        timed_out = worker.kill_reason == "deadline" and worker.kill_target == culprit.req_id
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
                f"({_describe_exit(worker)})"
            )
        log.warning("%s", error)
        if culprit.future is not None and not culprit.future.done():
            culprit.future.set_exception(error)
        if worker.kill_reason is None or timed_out:  # not for kills we chose for other reasons
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

    def _strike(self, actor_id: str, reason: str) -> None:
        now = self._loop.time()
        strikes = self._strikes.setdefault(actor_id, deque())
        strikes.append(now)
        while strikes and now - strikes[0] > self._quarantine_window:
            strikes.popleft()
        if len(strikes) < self._quarantine_after:
            return
        self._quarantined[actor_id] = reason
        self._drop(actor_id)
        log.error("actor %s quarantined after %d worker kills: %s", actor_id, len(strikes), reason)
        if self._on_quarantine is not None:
            try:
                self._on_quarantine(actor_id, reason)
            except Exception:  # a broken callback must not break the sandbox
                log.exception("on_quarantine callback failed")

    async def _watchdog(self) -> None:
        """Enforce deadlines: kill workers whose running request is over budget."""
        tick = max(0.005, min(0.1, min(self._deadline, self._load_deadline) / 10))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)
            now = self._loop.time()
            for worker in list(self._live):
                self._check(worker, now)

    def _check(self, worker: WorkerProcess, now: float) -> None:
        if worker.state is WorkerState.DEAD or worker.kill_reason is not None:
            return
        if worker.state is WorkerState.STARTING:
            if now - worker.spawned_at > STARTUP_TIMEOUT_S:
                worker.kill("startup timeout")
            return
        # Only the top of the worker's stack runs, and only while its guest is not waiting
        # for a host reply. A kill needs two identical readings a tick apart: a reading
        # torn by a concurrent update can never match the next one.
        top = worker.top()
        seen, worker.last_seen = worker.last_seen, top
        if top is not None and top.state == RUNNING and top == seen:
            head = worker.inflight.get(top.req_id)
            if head is not None and top.spent + (now - top.since) > head.budget:
                worker.kill("deadline", head.req_id)
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


def _describe_exit(worker: WorkerProcess) -> str:
    code = worker.returncode
    if worker.kill_reason is not None:
        return f"killed: {worker.kill_reason}"
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
