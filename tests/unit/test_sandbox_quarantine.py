"""Quarantine counts only deaths the actor caused, expires, and can be released (issue 7).

Real sandbox, real workers, real wasm3 guests. A worker SIGKILLed from outside (what the
kernel's OOM killer or an operator does) must not get the actor it was running quarantined;
a guest that hangs past its deadline or faults while it runs still is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
from _sandboxkit import Recorder, budgets, guest

from agent.errors import (
    ActorQuarantined,
    HostCallError,
    InvocationTimeout,
    LatticeEdgeError,
    WorkerCrashed,
)
from agent.runtime.sandbox import KillReason, QuarantineInfo, Sandbox
from agent.runtime.supervision import ExitCause, classify_exit

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def spinning(pid: int) -> None:
    """Return once the (otherwise idle) worker ``pid`` burns CPU: its guest is running."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.1)
        if cpu_seconds(pid) - before >= 0.03:
            return
    raise AssertionError(f"worker {pid} never started running its guest")


async def worker_of(sandbox: Sandbox, actor_id: str) -> int:
    """The pid of the worker serving ``actor_id``, once it is up (an echo went through)."""
    assert (await sandbox.invoke(actor_id, "echo", b"up", deadline=20)).response == b"up"
    return sandbox.worker_pids()[sandbox.worker_of(actor_id) or 0]


async def spin_and(sandbox: Sandbox, actor_id: str, signum: int) -> LatticeEdgeError:
    """Start a spinning call on ``actor_id``, send its worker ``signum`` mid-call, and return
    the error the caller got."""
    pid = await worker_of(sandbox, actor_id)
    call = asyncio.ensure_future(sandbox.invoke(actor_id, "spin", b"", deadline=30))
    await spinning(pid)
    os.kill(pid, signum)
    with pytest.raises(LatticeEdgeError) as raised:
        await asyncio.wait_for(call, 20)
    return raised.value


async def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert condition(), "condition not met in time"


async def timed_out(sandbox: Sandbox, actor_id: str) -> None:
    """Hang ``actor_id`` past its deadline; return once the sandbox has dealt with the kill
    (the caller hears of the timeout before the worker's death is processed)."""
    killed = sandbox.stats.killed
    with pytest.raises(InvocationTimeout):
        await sandbox.invoke(actor_id, "spin", b"")
    await wait_for(lambda: sandbox.stats.killed > killed)


# --- external kills are nobody's fault ------------------------------------------------------


async def test_three_external_sigkills_during_calls_do_not_quarantine_the_actor() -> None:
    reported: list[str] = []
    async with Sandbox(
        budgets(sandbox_workers=1),
        host_call_handler=Recorder(),
        on_quarantine=lambda actor_id, reason: reported.append(actor_id),
        quarantine_after=3,
        quarantine_window_s=60,
    ) as sandbox:
        await sandbox.load("victim", guest("hostile"))
        for _ in range(3):
            error = await spin_and(sandbox, "victim", signal.SIGKILL)
            assert isinstance(error, WorkerCrashed)
            assert "signal 9 (SIGKILL), which the sandbox did not send" in str(error)
        assert sandbox.quarantined() == {} and reported == []
        for index in range(5):  # the actor keeps serving
            payload = f"still here {index}".encode()
            assert (await sandbox.invoke("victim", "echo", payload)).response == payload
        assert sandbox.stats.external == 3 and sandbox.stats.killed == 0


async def test_kill_9_three_times_during_a_burst_every_caller_gets_a_reply() -> None:
    async with Sandbox(
        budgets(sandbox_workers=2), host_call_handler=Recorder(), quarantine_after=3
    ) as sandbox:
        await sandbox.load("a", guest("hostile"))
        await sandbox.load("b", guest("hostile"))
        assert sandbox.worker_of("a") != sandbox.worker_of("b")
        calls: list[tuple[bytes, asyncio.Future[object]]] = []
        stop = asyncio.Event()

        async def burst() -> None:
            index = 0
            while not stop.is_set():
                for actor_id in ("a", "b") * 10:
                    payload = f"{actor_id}{index}".encode()
                    call = sandbox.invoke(actor_id, "echo", payload, deadline=30)
                    calls.append((payload, asyncio.ensure_future(call)))
                    index += 1
                await asyncio.sleep(0.01)

        producer = asyncio.ensure_future(burst())
        # three kills of the same actor's worker: on a strike count, its quarantine
        spins = [await spin_and(sandbox, "a", signal.SIGKILL) for _ in range(3)]
        await asyncio.sleep(0.2)
        stop.set()
        await producer
        _, pending = await asyncio.wait([call for _, call in calls], timeout=60)
        assert not pending, f"{len(pending)} of {len(calls)} callers got no reply"
        assert len(calls) > 300
        assert sandbox.stats.resent > 0  # callers were in flight on the killed workers
        # The spins were running and fail; every echo queued behind them is sent again.
        assert all(isinstance(error, WorkerCrashed) for error in spins)
        for payload, call in calls:
            assert call.result().response == payload  # type: ignore[attr-defined]
        assert sandbox.quarantined() == {}
        for actor_id in ("a", "b"):
            assert (await sandbox.invoke(actor_id, "echo", b"after")).response == b"after"
        assert sandbox.stats.external == 3


class BlockingHostCall:
    """A host-call handler that holds every call until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, actor_id: str, binding: str, ns: str, op: str, pl: bytes) -> bytes:
        self.entered.set()
        await self.release.wait()
        raise HostCallError("released")


async def test_a_fault_while_no_guest_runs_blames_nobody() -> None:
    handler = BlockingHostCall()
    async with Sandbox(
        budgets(sandbox_workers=1), host_call_handler=handler, quarantine_after=3
    ) as sandbox:
        await sandbox.load("waiter", guest("hostile"))
        for _ in range(3):
            pid = await worker_of(sandbox, "waiter")
            handler.entered.clear()
            call = asyncio.ensure_future(sandbox.invoke("waiter", "hostcall", b"", deadline=30))
            await asyncio.wait_for(handler.entered.wait(), 20)  # the guest waits for the host
            os.kill(pid, signal.SIGSEGV)
            with pytest.raises(WorkerCrashed, match="while no guest code ran"):
                await asyncio.wait_for(call, 20)
        assert sandbox.quarantined() == {}
        handler.release.set()


# --- deaths the actor caused still count -------------------------------------------------


async def test_deadline_kills_still_quarantine_a_hanging_guest() -> None:
    reported: list[tuple[str, str]] = []
    async with Sandbox(
        budgets(invocation_deadline_s=0.3),
        host_call_handler=Recorder(),
        on_quarantine=lambda actor_id, reason: reported.append((actor_id, reason)),
        quarantine_after=3,
        quarantine_window_s=60,
        quarantine_expiry_s=600,
    ) as sandbox:
        await sandbox.load("good", guest("echo"))
        await sandbox.load("bad", guest("hostile"))
        began = time.time()
        for strike in range(3):
            assert sandbox.quarantined() == {}, f"quarantined after {strike} strikes"
            await timed_out(sandbox, "bad")
        info = sandbox.quarantined()["bad"]
        assert isinstance(info, QuarantineInfo)
        assert began <= info.since <= time.time()
        assert info.until == pytest.approx(info.since + 600)
        assert "deadline" in info.reason
        assert [actor for actor, _ in reported] == ["bad"]
        with pytest.raises(ActorQuarantined, match="quarantined until"):
            await sandbox.invoke("bad", "echo", b"")
        with pytest.raises(ActorQuarantined):
            await sandbox.load("bad", guest("hostile"))
        assert (await sandbox.invoke("good", "echo", b"fine")).response == b"fine"
        assert sandbox.actors() == ["good"]


async def test_guest_faults_while_running_still_quarantine() -> None:
    async with Sandbox(
        budgets(sandbox_workers=1), host_call_handler=Recorder(), quarantine_after=3
    ) as sandbox:
        await sandbox.load("bad", guest("hostile"))
        for _ in range(3):
            error = await spin_and(sandbox, "bad", signal.SIGSEGV)
            assert "signal 11 (SIGSEGV) while its guest code ran" in str(error)
        assert list(sandbox.quarantined()) == ["bad"]
        assert sandbox.stats.external == 0


# --- quarantine ends ---------------------------------------------------------------------


async def test_quarantine_expires_and_the_actor_serves_again() -> None:
    expired: list[tuple[str, str | None]] = []
    async with Sandbox(
        budgets(invocation_deadline_s=0.3),
        host_call_handler=Recorder(),
        quarantine_after=2,
        quarantine_expiry_s=1.5,
        on_quarantine_expired=lambda actor_id, error: expired.append((actor_id, error)),
    ) as sandbox:
        await sandbox.load("bad", guest("hostile"))
        for _ in range(2):
            await timed_out(sandbox, "bad")
        assert list(sandbox.quarantined()) == ["bad"]
        quarantined_at = time.monotonic()
        await wait_for(lambda: expired)
        assert time.monotonic() - quarantined_at >= 1.0
        assert expired == [("bad", None)] and sandbox.quarantined() == {}
        # loaded again with the module it ran, and its strikes start from zero
        assert (await sandbox.invoke("bad", "echo", b"back")).response == b"back"
        await timed_out(sandbox, "bad")
        assert sandbox.quarantined() == {}


async def test_release_ends_a_quarantine_and_the_actor_loads_again() -> None:
    async with Sandbox(
        budgets(invocation_deadline_s=0.3),
        host_call_handler=Recorder(),
        quarantine_after=2,
        quarantine_expiry_s=600,
    ) as sandbox:
        await sandbox.load("bad", guest("hostile"))
        for _ in range(2):
            await timed_out(sandbox, "bad")
        assert list(sandbox.quarantined()) == ["bad"]
        assert sandbox.release("bad") is True
        assert sandbox.release("bad") is False and sandbox.release("never") is False
        assert sandbox.quarantined() == {}
        await sandbox.load("bad", guest("hostile"))  # what scale/update do after release
        assert (await sandbox.invoke("bad", "echo", b"back")).response == b"back"
        await timed_out(sandbox, "bad")  # one strike: the count restarted
        assert sandbox.quarantined() == {}


async def test_unload_during_quarantine_means_no_reload_at_expiry() -> None:
    expired: list[str] = []
    async with Sandbox(
        budgets(invocation_deadline_s=0.3),
        host_call_handler=Recorder(),
        quarantine_after=1,
        quarantine_expiry_s=0.5,
        on_quarantine_expired=lambda actor_id, error: expired.append(actor_id),
    ) as sandbox:
        await sandbox.load("bad", guest("hostile"))
        await timed_out(sandbox, "bad")
        await sandbox.unload("bad")
        await asyncio.sleep(1.0)
        assert sandbox.actors() == [] and expired == []


def test_quarantine_settings_are_checked() -> None:
    for bad in ({"quarantine_after": 0}, {"quarantine_expiry_s": 0}, {"quarantine_window_s": -1}):
        with pytest.raises(ValueError):
            Sandbox(budgets(), **bad)  # type: ignore[arg-type]


# --- the classification itself (pure) --------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "code", "guest_running", "owed", "cause"),
    [
        (None, 0, False, False, ExitCause.PLANNED),
        (None, -9, True, True, ExitCause.EXTERNAL),  # SIGKILL we did not send
        (None, -15, True, True, ExitCause.EXTERNAL),  # SIGTERM
        (None, -9, False, False, ExitCause.EXTERNAL),
        (None, -11, True, True, ExitCause.GUEST_FAULT),
        (None, -6, True, True, ExitCause.GUEST_FAULT),  # SIGABRT
        (None, -7, True, True, ExitCause.GUEST_FAULT),  # SIGBUS
        (None, -4, True, True, ExitCause.GUEST_FAULT),  # SIGILL
        (None, 1, True, True, ExitCause.GUEST_FAULT),  # MemoryError at RLIMIT_AS, say
        (None, -11, False, True, ExitCause.WORKER_FAULT),
        (None, 1, False, True, ExitCause.WORKER_FAULT),
        (None, 0, False, True, ExitCause.WORKER_FAULT),  # a clean exit that owed answers
        (None, None, False, True, ExitCause.WORKER_FAULT),
        (KillReason.DEADLINE, -9, True, True, ExitCause.KILLED),
        (KillReason.SANDBOX_CLOSED, -9, False, True, ExitCause.KILLED),
    ],
)
def test_classify_exit(
    reason: KillReason | None, code: int | None, guest_running: bool, owed: bool, cause: ExitCause
) -> None:
    assert classify_exit(reason, code, guest_running=guest_running, owed=owed) is cause
