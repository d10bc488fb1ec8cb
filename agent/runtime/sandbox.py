"""Run actors in sandbox worker processes: the agent-side asyncio API.

Actors never run in the agent's process (see ``DESIGN.md``, process model). A
:class:`Sandbox` keeps ``budgets.sandbox_workers`` worker slots; each actor is assigned to
the least loaded slot and lives in that slot's current worker process. Every request is
pipelined to its worker and tagged with an id, so many invocations can be in flight per
worker; the worker runs them in order.

**Nested invocations.** A host-call handler may invoke another actor, also one in the same
worker: while a guest waits for its host reply the worker runs other actors' requests on top
of it (see :mod:`agent.runtime.worker`). A call back into an actor that is already running
further up the same call chain (A -> A, A -> B -> A) would wait for itself, since waPC
guests are not re-entrant: :meth:`Sandbox.invoke` refuses it at once with an
:class:`ActorError` (the chain is tracked in :data:`~agent.runtime.workerproc.CALL_CHAIN`).
A chain that leaves the process (over NATS) cannot be tracked: such a call waits until the
actor is idle, bounded by the outer invocation's deadline.

Failure handling, in one place:

* **Deadline.** A request may run ``deadline`` seconds of guest time (time its guest waits
  for host calls, nested invocations included, does not count; each nested invocation has
  its own deadline); past that its worker is SIGKILLed and the caller gets
  :class:`InvocationTimeout`. Callers whose request waited past its deadline (queued, or
  under a nested call) get :class:`InvocationTimeout` without a kill.
* **Crash.** A worker that dies (segfault, ``RLIMIT_AS``) fails the request it was running
  with :class:`WorkerCrashed`.
* After either, every other request that had started in that worker (outer invocations
  waiting for a host call) fails with :class:`WorkerCrashed`, answers the worker had
  finished are still delivered, the slot gets a new worker, its other actors are reloaded,
  and the requests that never started are sent again: nothing is lost and nothing runs
  twice. The worker's status page (:mod:`agent.runtime.statuspage`) makes this exact.
* **Quarantine.** An actor whose requests kill its worker ``quarantine_after`` times within
  ``quarantine_window_s`` is dropped; further calls raise :class:`ActorQuarantined`.
* **Recycling.** After ``worker_recycle_calls`` invocations a worker is drained: new requests
  go to a fresh worker that reloads the slot's actors, the old one finishes what it has and
  exits. This bounds pywasm3's per-call leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from types import TracebackType
from typing import NamedTuple

from agent.errors import (
    ActorError,
    ActorQuarantined,
    InvocationTimeout,
    WorkerCrashed,
    WorkerProtocolError,
)
from agent.runtime.builtins import BuiltinHostCalls, HostCallHandler
from agent.runtime.protocol import (
    MAX_FRAME_BYTES,
    Failure,
    Load,
    Result,
    Unload,
    encode_message,
    error_from_wire,
)
from agent.runtime.statuspage import RUNNING
from agent.runtime.workerproc import (
    CALL_CHAIN,
    HostCallRecord,
    Request,
    RequestKind,
    WorkerProcess,
    WorkerState,
)
from profiles import Budgets

__all__ = [
    "HostCallHandler",
    "HostCallRecord",
    "InvocationResult",
    "Sandbox",
    "SandboxState",
    "SandboxStats",
]

log = logging.getLogger("agent.runtime.sandbox")

STARTUP_TIMEOUT_S = 30.0  # Python start-up on a Pi Zero under load takes seconds
MAX_RESPAWN_DELAY_S = 5.0
MAX_CALL_DEPTH = 8  # nested invocations per call chain (the worker nests at most 32 deep)
MAX_RESENDS = 3  # a request whose workers keep dying before it starts fails after this
MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - 64 * 1024  # room for the rest of the frame
_INVOKE = RequestKind.INVOKE
_tuple_new = tuple.__new__


class SandboxState(enum.Enum):
    """Lifecycle of a :class:`Sandbox`."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class InvocationResult(NamedTuple):
    """What one invocation produced (a NamedTuple: it is built for every call)."""

    response: bytes
    console: tuple[str, ...]  # __console_log and WASI stdout/stderr lines, in order
    host_calls: tuple[HostCallRecord, ...]


@dataclass(slots=True)
class SandboxStats:
    """Counters for monitoring and tests."""

    spawned: int = 0
    recycled: int = 0
    killed: int = 0
    crashed: int = 0
    resent: int = 0


@dataclass(slots=True, eq=False)
class _Slot:
    index: int
    worker: WorkerProcess
    actors: dict[str, bytes] = field(default_factory=dict)  # actor id -> module bytes
    loading: int = 0
    failures: deque[float] = field(default_factory=deque)  # recent unplanned worker deaths


class Sandbox:
    """Actors in worker processes, behind an asyncio API. Use as an async context manager.

    ``host_call_handler`` serves guests' host calls (default: :class:`BuiltinHostCalls`);
    ``on_quarantine(actor_id, reason)`` is called when an actor is quarantined.
    ``deadline_s``/``load_deadline_s`` default to the budget's invocation deadline (loads
    get 5x: instantiating a large module on a Pi is slow).
    """

    def __init__(
        self,
        budgets: Budgets,
        *,
        host_call_handler: HostCallHandler | None = None,
        on_quarantine: Callable[[str, str], None] | None = None,
        deadline_s: float | None = None,
        load_deadline_s: float | None = None,
        quarantine_after: int = 3,
        quarantine_window_s: float = 60.0,
    ) -> None:
        self._budgets = budgets
        self._handler: HostCallHandler = host_call_handler or BuiltinHostCalls()
        self._on_quarantine = on_quarantine
        self._deadline = deadline_s if deadline_s is not None else budgets.invocation_deadline_s
        self._load_deadline = load_deadline_s if load_deadline_s is not None else 5 * self._deadline
        self._quarantine_after = quarantine_after
        self._quarantine_window = quarantine_window_s
        self._state = SandboxState.NEW
        self._slots: list[_Slot] = []
        self._actor_slot: dict[str, _Slot] = {}
        self._live: set[WorkerProcess] = set()
        self._strikes: dict[str, deque[float]] = {}
        self._quarantined: dict[str, str] = {}
        self._next_id = 0
        self._generation = 0
        self._tg = asyncio.TaskGroup()
        self._stop = asyncio.Event()
        self._chain_key = id(self)
        self._recycle_calls = budgets.worker_recycle_calls
        self.stats = SandboxStats()

    # --- lifecycle --------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        """Where the sandbox is in its lifecycle."""
        return self._state

    async def __aenter__(self) -> Sandbox:
        if self._state is not SandboxState.NEW:
            raise ActorError("a Sandbox can be entered only once")
        self._loop = asyncio.get_running_loop()
        await self._tg.__aenter__()
        self._state = SandboxState.RUNNING
        for index in range(self._budgets.sandbox_workers):
            self._slots.append(_Slot(index, self._spawn(index)))
        self._tg.create_task(self._watchdog(), name="sandbox-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self._shutdown(graceful=exc_type is None)
        finally:
            # The body's own exception is not the task group's business: passing it would
            # wrap it in an ExceptionGroup. Every worker is stopped by now, so this only
            # collects the finished tasks (and reports a bug in one as an ExceptionGroup).
            await self._tg.__aexit__(None, None, None)
        return None

    async def _shutdown(self, *, graceful: bool) -> None:
        self._state = SandboxState.CLOSING
        if graceful:
            # Let requests in flight finish (each is bounded by its deadline anyway).
            waiters = [r.future for w in self._live for r in w.inflight.values() if r.future]
            if waiters:
                await asyncio.wait(waiters, timeout=self._deadline + 1.0)
        for worker in list(self._live):
            if graceful:
                worker.drain_and_exit()
            else:
                worker.kill("sandbox closed")
        for _ in range(100):
            if not self._live:
                break
            await asyncio.sleep(0.02)
        for worker in list(self._live):
            worker.kill("sandbox closed")
        self._stop.set()
        self._state = SandboxState.CLOSED

    # --- public API -------------------------------------------------------------------

    async def load(self, actor_id: str, wasm: bytes) -> None:
        """Instantiate ``wasm`` as ``actor_id`` (replacing a loaded actor of that id).

        The sandbox does not inspect or clamp the module: admission
        (:mod:`agent.runtime.module`) does that first. Raises ModuleError subclasses for
        modules wasm3 rejects, TrapError when a start function traps, InvocationTimeout or
        WorkerCrashed when loading hung or killed the worker, ActorQuarantined for a
        quarantined id (unload it first to allow a reload).
        """
        self._check_running()
        if actor_id in self._quarantined:
            raise ActorQuarantined(
                f"actor {actor_id} is quarantined: {self._quarantined[actor_id]}"
            )
        slot = self._actor_slot.get(actor_id)
        if slot is None:
            if len(self._actor_slot) + sum(s.loading for s in self._slots) >= (
                self._budgets.max_actors
            ):
                raise ActorError(
                    f"cannot load {actor_id}: {self._budgets.max_actors} actors loaded"
                )
            slot = min(
                self._slots, key=lambda s: (len(s.actors) + s.loading, len(s.worker.inflight))
            )
        request = self._load_request(slot, actor_id, wasm, internal=False)
        slot.loading += 1
        try:
            slot.worker.submit(request)
            assert request.future is not None
            result = await request.future
        finally:
            slot.loading -= 1
        for line in result.console:
            log.info("actor %s: %s", actor_id, line)
        slot.actors[actor_id] = wasm
        self._actor_slot[actor_id] = slot
        if slot.worker is not request.worker:
            # The slot was recycled or respawned while we loaded: its new worker needs it too.
            slot.worker.submit(self._load_request(slot, actor_id, wasm, internal=True))

    async def invoke(
        self, actor_id: str, operation: str, payload: bytes, deadline: float | None = None
    ) -> InvocationResult:
        """Run ``operation`` on a loaded actor and return its :class:`InvocationResult`.

        ``deadline`` (seconds, default the budget's) bounds the guest's run time and the
        caller's wait. Called from a host-call handler, it is a nested invocation (see the
        module docstring). Raises GuestError, TrapError, InvocationTimeout, WorkerCrashed,
        ActorQuarantined, or ActorError (not loaded, sandbox closed, re-entrant call).
        """
        slot = self._actor_slot.get(actor_id)
        if slot is None or self._state is not SandboxState.RUNNING:
            raise self._unavailable(actor_id)
        chain = CALL_CHAIN.get()
        if chain:
            self._check_chain(chain, actor_id)
        if (
            type(payload) is not bytes
            or len(payload) > MAX_PAYLOAD_BYTES
            or not operation.isascii()
        ):
            payload = _checked(operation, payload)  # the frame is encoded later, with others
        budget = self._deadline if deadline is None else deadline
        self._next_id += 1
        future: asyncio.Future[Result] = self._loop.create_future()
        request = Request(
            self._next_id,
            actor_id,
            slot.index,
            _INVOKE,
            operation,
            payload,
            b"",
            budget,
            monotonic() + budget,  # the event loop's clock, without the method call
            future,
            chain,
        )
        worker = slot.worker
        worker.submit_invoke(request)
        if worker.calls_sent >= self._recycle_calls:
            self._recycle(slot)
        if not worker.calls_sent & 63 and worker.backlogged:  # checked now and then: it's cheap
            await worker.wait_writable()
        result = await future
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (this runs per call).
        return _tuple_new(
            InvocationResult, (result.payload, result.console, tuple(request.host_calls or ()))
        )

    async def unload(self, actor_id: str) -> None:
        """Drop an actor (and forget its quarantine, so it may be loaded again)."""
        self._quarantined.pop(actor_id, None)
        self._strikes.pop(actor_id, None)
        slot = self._actor_slot.pop(actor_id, None)
        if slot is None:
            return
        slot.actors.pop(actor_id, None)
        if self._state is SandboxState.RUNNING:
            req_id = self._new_id()
            frame = encode_message(Unload(req_id, actor_id))
            expires_at = self._loop.time() + self._deadline
            slot.worker.submit(
                Request(
                    req_id,
                    actor_id,
                    slot.index,
                    RequestKind.UNLOAD,
                    "",
                    b"",
                    frame,
                    self._deadline,
                    expires_at,
                    None,
                )
            )

    def actors(self) -> list[str]:
        """Ids of the loaded actors."""
        return sorted(self._actor_slot)

    def quarantined(self) -> dict[str, str]:
        """Quarantined actor ids and why."""
        return dict(self._quarantined)

    def worker_pids(self) -> list[int]:
        """Pids of the workers currently taking requests, by slot (for monitoring)."""
        return [s.worker.pid for s in self._slots if s.worker.pid is not None]

    def worker_of(self, actor_id: str) -> int | None:
        """The slot index an actor is assigned to, or None."""
        slot = self._actor_slot.get(actor_id)
        return slot.index if slot is not None else None

    # --- internals --------------------------------------------------------------------

    def _check_chain(self, chain: tuple[tuple[int, str], ...], actor_id: str) -> None:
        if (self._chain_key, actor_id) in chain:
            path = " -> ".join(a for _, a in (*chain, (0, actor_id)))
            raise ActorError(
                f"actor {actor_id} is already running an invocation further up this call "
                f"chain ({path}); waPC actors are not re-entrant, so the call is refused"
            )
        if len(chain) >= MAX_CALL_DEPTH:
            raise ActorError(
                f"call chain too deep: {len(chain)} nested invocations (limit {MAX_CALL_DEPTH})"
            )

    def _check_running(self) -> None:
        if self._state is not SandboxState.RUNNING:
            raise ActorError(f"the sandbox is {self._state.value}")

    def _unavailable(self, actor_id: str) -> ActorError:
        if self._state is not SandboxState.RUNNING:
            return ActorError(f"the sandbox is {self._state.value}")
        if actor_id in self._quarantined:
            return ActorQuarantined(
                f"actor {actor_id} is quarantined: {self._quarantined[actor_id]}"
            )
        return ActorError(f"actor {actor_id} is not loaded")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _load_request(self, slot: _Slot, actor_id: str, wasm: bytes, *, internal: bool) -> Request:
        req_id = self._new_id()
        frame = encode_message(Load(req_id, actor_id, wasm, self._budgets.actor_stack_bytes))
        future = None if internal else self._loop.create_future()
        budget = self._load_deadline
        expires_at = self._loop.time() + budget
        return Request(
            req_id, actor_id, slot.index, RequestKind.LOAD, "", b"", frame, budget, expires_at,
            future,
        )  # fmt: skip

    def _spawn(self, index: int, delay: float = 0.0) -> WorkerProcess:
        self._generation += 1
        worker = WorkerProcess(
            f"{index}.{self._generation}",
            memory_limit_mb=self._budgets.worker_memory_limit_mb,
            host_call_handler=self._handler,
            on_reply=self._on_reply,
            on_exit=self._on_exit,
            start_delay=delay,
            chain_key=self._chain_key,
        )
        self._live.add(worker)
        self.stats.spawned += 1
        self._tg.create_task(worker.run(), name=f"sandbox-worker-{worker.name}")
        return worker

    def _reload_into(self, slot: _Slot, worker: WorkerProcess) -> None:
        for actor_id, wasm in slot.actors.items():
            worker.submit(self._load_request(slot, actor_id, wasm, internal=True))

    def _recycle(self, slot: _Slot) -> None:
        old = slot.worker
        if old.state is WorkerState.DRAINING or self._state is not SandboxState.RUNNING:
            return
        slot.worker = self._spawn(slot.index)
        self._reload_into(slot, slot.worker)
        self.stats.recycled += 1
        log.debug("recycling worker %s after %d calls", old.name, old.calls_sent)
        old.drain_and_exit()

    def _on_reply(
        self, worker: WorkerProcess, request: Request | None, message: Result | Failure
    ) -> None:
        if request is None:
            return
        future = request.future
        if isinstance(message, Result):
            if future is not None and not future.done():
                future.set_result(message)
            return
        for line in message.console:
            log.debug("actor %s: %s", request.actor_id, line)
        if future is not None:
            if not future.done():
                future.set_exception(error_from_wire(message.kind, message.message))
        elif request.kind is RequestKind.LOAD:
            # A reload of an actor that loaded before: only a broken environment gets here.
            log.error(
                "actor %s could not be reloaded and is dropped: %s",
                request.actor_id,
                message.message,
            )
            self._drop(request.actor_id)

    def _drop(self, actor_id: str) -> None:
        slot = self._actor_slot.pop(actor_id, None)
        if slot is not None:
            slot.actors.pop(actor_id, None)

    def _on_exit(self, worker: WorkerProcess) -> None:
        self._live.discard(worker)
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

    def _respawn(self, slot: _Slot) -> None:
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


def _checked(operation: str, payload: bytes) -> bytes:
    """Validate what a fast type/size test flagged, before it joins a shared frame."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"the payload must be bytes, not {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WorkerProtocolError(f"an invocation of {len(payload)} bytes exceeds the frame limit")
    try:
        operation.encode()
    except UnicodeEncodeError:
        raise ActorError(f"the operation name {operation!r:.80} is not valid UTF-8") from None
    return payload


def _describe_exit(worker: WorkerProcess) -> str:
    code = worker.returncode
    if worker.kill_reason is not None:
        return f"killed: {worker.kill_reason}"
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
