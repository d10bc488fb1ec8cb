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
  ``quarantine_window_s`` is dropped for ``quarantine_expiry_s``; calls meanwhile raise
  :class:`ActorQuarantined`. Only deaths the actor caused count (a deadline kill, a fault or
  error exit while its guest ran); a SIGKILL from the OOM killer or an operator blames
  nobody. At expiry the actor is loaded again with the module it ran; :meth:`Sandbox.release`
  ends a quarantine early, :meth:`Sandbox.unload` forgets it.
* **Recycling.** After ``worker_recycle_calls`` invocations a worker is drained: new requests
  go to a fresh worker that reloads the slot's actors, the old one finishes what it has and
  exits. This bounds pywasm3's per-call leaks. The fresh worker is started at 3/4 of the
  count and takes over once it is ready (at the latest at 5/4), so callers never wait for a
  Python start-up.

The failure policy lives in :mod:`agent.runtime.supervision` (a mixin of :class:`Sandbox`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from time import monotonic
from types import TracebackType
from typing import NamedTuple

from agent.errors import (
    ActorError,
    ActorQuarantined,
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
from agent.runtime.supervision import (
    QuarantineInfo,
    SandboxState,
    SandboxStats,
    Slot,
    Supervision,
)
from agent.runtime.workerproc import (
    CALL_CHAIN,
    HostCallRecord,
    KillReason,
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
    "KillReason",
    "QuarantineInfo",
    "Sandbox",
    "SandboxState",
    "SandboxStats",
]

log = logging.getLogger("agent.runtime.sandbox")

MAX_CALL_DEPTH = 8  # nested invocations per call chain (the worker nests at most 32 deep)
MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - 64 * 1024  # room for the rest of the frame
_INVOKE = RequestKind.INVOKE
_tuple_new = tuple.__new__


class InvocationResult(NamedTuple):
    """What one invocation produced (a NamedTuple: it is built for every call)."""

    response: bytes
    console: tuple[str, ...]  # __console_log and WASI stdout/stderr lines, in order
    host_calls: tuple[HostCallRecord, ...]


class Sandbox(Supervision):
    """Actors in worker processes, behind an asyncio API. Use as an async context manager.

    ``host_call_handler`` serves guests' host calls (default: :class:`BuiltinHostCalls`);
    ``on_quarantine(actor_id, reason)`` is called when an actor is quarantined, and
    ``on_quarantine_expired(actor_id, error)`` when its quarantine expired and it was loaded
    again (``error`` None) or could not be (the error's message). An actor is quarantined
    after ``quarantine_after`` deaths it caused within ``quarantine_window_s``, for
    ``quarantine_expiry_s``.
    ``deadline_s``/``load_deadline_s`` default to the budget's invocation deadline (loads
    get 5x: instantiating a large module on a Pi is slow). ``pack`` (actors per worker)
    starts one worker and spawns the next only when every worker holds that many actors,
    trading parallelism for memory: each idle worker costs about 10 MB.
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
        quarantine_expiry_s: float = 600.0,
        on_quarantine_expired: Callable[[str, str | None], None] | None = None,
        pack: int | None = None,
    ) -> None:
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be at least 1, not {quarantine_after}")
        if not quarantine_window_s > 0 or not quarantine_expiry_s > 0:
            raise ValueError("quarantine_window_s and quarantine_expiry_s must be positive")
        self._budgets = budgets
        self._pack = pack
        self._handler: HostCallHandler = host_call_handler or BuiltinHostCalls()
        self._on_quarantine = on_quarantine
        self._deadline = deadline_s if deadline_s is not None else budgets.invocation_deadline_s
        self._load_deadline = load_deadline_s if load_deadline_s is not None else 5 * self._deadline
        self._quarantine_after = quarantine_after
        self._quarantine_window = quarantine_window_s
        self._quarantine_expiry = quarantine_expiry_s
        self._on_quarantine_expired = on_quarantine_expired
        self._state = SandboxState.NEW
        self._slots: list[Slot] = []
        self._actor_slot: dict[str, Slot] = {}
        self._live: set[WorkerProcess] = set()
        self._strikes: dict[str, deque[float]] = {}
        self._quarantined = {}
        self._restoring: set[str] = set()
        self._next_id = 0
        self._generation = 0
        self._tg = asyncio.TaskGroup()
        self._stop = asyncio.Event()
        self._chain_key = id(self)
        self._recycle_calls = budgets.worker_recycle_calls
        self._standby_at = max(1, self._recycle_calls * 3 // 4)
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
        for index in range(1 if self._pack else self._budgets.sandbox_workers):
            self._slots.append(Slot(index, self._spawn(index)))
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
                worker.kill(KillReason.SANDBOX_CLOSED)
        for _ in range(100):
            if not self._live:
                break
            await asyncio.sleep(0.02)
        for worker in list(self._live):
            worker.kill(KillReason.SANDBOX_CLOSED)
        self._stop.set()
        self._state = SandboxState.CLOSED

    def _place(self) -> Slot:
        """The slot a new actor goes to: the least loaded one, or, when packing, the least
        loaded one with room, spawning another worker only once every slot is full."""
        slots = self._slots
        if self._pack:
            with_room = [s for s in slots if len(s.actors) + s.loading < self._pack]
            if with_room:
                slots = with_room
            elif len(self._slots) < self._budgets.sandbox_workers:
                slot = Slot(len(self._slots), self._spawn(len(self._slots)))
                self._slots.append(slot)
                return slot
        return min(slots, key=lambda s: (len(s.actors) + s.loading, len(s.worker.inflight)))

    # --- public API -------------------------------------------------------------------

    async def load(self, actor_id: str, wasm: bytes) -> None:
        """Instantiate ``wasm`` as ``actor_id`` (replacing a loaded actor of that id).

        The sandbox does not inspect or clamp the module: admission
        (:mod:`agent.runtime.module`) does that first. Raises ModuleError subclasses for
        modules wasm3 rejects, TrapError when a start function traps, InvocationTimeout or
        WorkerCrashed when loading hung or killed the worker, ActorQuarantined for a
        quarantined id (:meth:`release` or :meth:`unload` it first to allow a reload).
        """
        self._check_running()
        if self._quarantine_of(actor_id) is not None:
            raise self._unavailable(actor_id)
        self._quarantined.pop(actor_id, None)  # expired: this load is its return
        slot = self._actor_slot.get(actor_id)
        if slot is None:
            if len(self._actor_slot) + sum(s.loading for s in self._slots) >= (
                self._budgets.max_actors
            ):
                raise ActorError(
                    f"cannot load {actor_id}: {self._budgets.max_actors} actors loaded"
                )
            slot = self._place()
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
        if slot.standby is not None and slot.standby is not request.worker:
            slot.standby.submit(self._load_request(slot, actor_id, wasm, internal=True))

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
        if worker.calls_sent >= self._standby_at:
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
        self._restoring.discard(actor_id)
        self._strikes.pop(actor_id, None)
        slot = self._actor_slot.pop(actor_id, None)
        if slot is None:
            return
        slot.actors.pop(actor_id, None)
        if self._state is not SandboxState.RUNNING:
            return
        for worker in (slot.worker, slot.standby):
            if worker is not None:
                req_id = self._new_id()
                frame = encode_message(Unload(req_id, actor_id))
                expires_at = self._loop.time() + self._deadline
                kind = RequestKind.UNLOAD
                request = Request(
                    req_id, actor_id, slot.index, kind, "", b"", frame, self._deadline, expires_at,
                    None,
                )  # fmt: skip
                worker.submit(request)

    def actors(self) -> list[str]:
        """Ids of the loaded actors."""
        return sorted(self._actor_slot)

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
        record = self._quarantined.get(actor_id)
        if record is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.info.until))
            return ActorQuarantined(
                f"actor {actor_id} is quarantined until {until}: {record.info.reason}"
            )
        if actor_id in self._restoring:
            return ActorError(f"actor {actor_id} is being loaded again after its quarantine")
        return ActorError(f"actor {actor_id} is not loaded")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _load_request(self, slot: Slot, actor_id: str, wasm: bytes, *, internal: bool) -> Request:
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

    def _reload_into(self, slot: Slot, worker: WorkerProcess) -> None:
        for actor_id, wasm in slot.actors.items():
            worker.submit(self._load_request(slot, actor_id, wasm, internal=True))

    def _recycle(self, slot: Slot) -> None:
        old = slot.worker
        if old.state is WorkerState.DRAINING or self._state is not SandboxState.RUNNING:
            return
        standby = slot.standby
        if standby is None:
            slot.standby = standby = self._spawn(slot.index)
            self._reload_into(slot, standby)
        if old.calls_sent < self._recycle_calls:
            return
        if standby.state is not WorkerState.READY and (
            old.calls_sent < self._recycle_calls + self._recycle_calls // 4
        ):
            return  # still starting: the old worker serves a little longer meanwhile
        slot.worker, slot.standby = standby, None
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
