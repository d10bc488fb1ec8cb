"""Hostile actors hurt only their own worker: another actor is served during and after."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest
from _sandboxkit import DEADLINE, Recorder, budgets, guest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import (
    ActorError,
    ActorQuarantined,
    InvocationTimeout,
    LatticeEdgeError,
    ModuleError,
    TrapError,
    WorkerCrashed,
)
from agent.runtime.module import clamp_memory
from agent.runtime.sandbox import Sandbox

GUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "guests"


async def start(**changes: object) -> Sandbox:
    sandbox = Sandbox(budgets(**changes), host_call_handler=Recorder(), quarantine_after=3)
    return await sandbox.__aenter__()


async def served_during(sandbox: Sandbox, hostile: Awaitable[object]) -> object:
    """Await ``hostile`` while the good actor keeps answering; return its outcome."""
    task = asyncio.ensure_future(hostile)
    answered = 0
    while not task.done():
        payload = os.urandom(8)
        assert (await sandbox.invoke("good", "echo", payload)).response == payload
        answered += 1
        await asyncio.sleep(0.01)
    assert answered >= 1
    try:
        return await task
    except LatticeEdgeError as exc:
        return exc


async def with_good_and_bad(sandbox: Sandbox, bad: bytes) -> None:
    await sandbox.load("good", guest("echo"))
    await sandbox.load("bad", bad)
    assert sandbox.worker_of("good") != sandbox.worker_of("bad")


async def test_infinite_loop_is_killed_at_the_deadline() -> None:
    sandbox = await start()
    try:
        await with_good_and_bad(sandbox, guest("hostile"))
        before = sandbox.worker_pids()
        began = time.monotonic()
        outcome = await served_during(sandbox, sandbox.invoke("bad", "spin", b""))
        elapsed = time.monotonic() - began
        assert isinstance(outcome, InvocationTimeout)
        assert DEADLINE * 0.9 <= elapsed < DEADLINE + 0.5
        # After: the good actor is untouched, the bad one runs again in a new worker.
        assert (await sandbox.invoke("good", "echo", b"after")).response == b"after"
        assert (await sandbox.invoke("bad", "echo", b"reloaded")).response == b"reloaded"
        assert sandbox.worker_pids() != before
        assert sandbox.stats.killed == 1
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_requests_queued_behind_a_hang_are_resent_not_lost() -> None:
    sandbox = await start(sandbox_workers=1)
    try:
        await sandbox.load("good", guest("echo"))
        await sandbox.load("bad", guest("hostile"))
        hang = asyncio.ensure_future(sandbox.invoke("bad", "spin", b""))
        queued = [
            asyncio.ensure_future(sandbox.invoke("good", "echo", str(i).encode(), deadline=5.0))
            for i in range(20)
        ]
        with pytest.raises(InvocationTimeout):
            await hang
        results = await asyncio.gather(*queued)
        assert [r.response for r in results] == [str(i).encode() for i in range(20)]
        assert sandbox.stats.resent >= 20
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_memory_bomb_without_maximum_is_held_by_rlimit() -> None:
    sandbox = await start(worker_memory_limit_mb=256, invocation_deadline_s=3.0)
    try:
        await with_good_and_bad(sandbox, guest("hostile"))
        outcome = await served_during(sandbox, sandbox.invoke("bad", "grow", b""))
        if isinstance(outcome, LatticeEdgeError):
            # wasm3 may trap, or the worker may die at the limit: both are contained.
            assert isinstance(outcome, TrapError | WorkerCrashed)
        else:
            pages = int.from_bytes(outcome.response, "little")  # type: ignore[attr-defined]
            assert pages * 64 * 1024 < 256 * 1024 * 1024
        assert (await sandbox.invoke("good", "echo", b"after")).response == b"after"
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_memory_bomb_clamped_by_admission_stops_at_the_budget() -> None:
    pages_budget = 64
    sandbox = await start()
    try:
        await with_good_and_bad(sandbox, clamp_memory((GUESTS / "membomb.wasm").read_bytes(), 64))
        outcome = await served_during(sandbox, sandbox.invoke("bad", "grow", b""))
        assert int.from_bytes(outcome.response, "little") == pages_budget  # type: ignore[attr-defined]
        assert (await sandbox.invoke("good", "echo", b"after")).response == b"after"
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_unbounded_recursion_traps_and_backtraces_are_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.runtime.sandbox")
    sandbox = await start()
    try:
        await with_good_and_bad(sandbox, guest("hostile"))
        outcome = await served_during(sandbox, sandbox.invoke("bad", "recurse", b""))
        assert isinstance(outcome, TrapError)
        assert "stack overflow" in str(outcome)
        assert (await sandbox.invoke("bad", "echo", b"same worker")).response == b"same worker"
        assert sandbox.stats.killed == sandbox.stats.crashed == 0
        await asyncio.sleep(0.2)  # let the stderr pump catch up
    finally:
        await sandbox.__aexit__(None, None, None)
    stderr_lines = [r for r in caplog.records if "stderr" in r.getMessage()]
    assert len(stderr_lines) < 200  # wasm3 printed thousands of backtrace lines
    # ... and they are folded into debug records of at most a few frames each
    traces = [r.getMessage() for r in caplog.records if "trap backtrace" in r.getMessage()]
    assert traces and all(r.count(";") < 8 for r in traces)
    assert any("more frames" in t for t in traces)


@pytest.mark.parametrize(
    ("operation", "match"), [("unreachable", "unreachable"), ("x", "proc_exit")]
)
async def test_traps_are_errors(operation: str, match: str) -> None:
    sandbox = await start()
    try:
        await with_good_and_bad(sandbox, guest("hostile"))
        outcome = await served_during(sandbox, sandbox.invoke("bad", operation, b""))
        assert isinstance(outcome, TrapError)
        assert match in str(outcome)
        assert (await sandbox.invoke("bad", "echo", b"ok")).response == b"ok"
        assert (await sandbox.invoke("good", "echo", b"after")).response == b"after"
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_garbage_bytes_are_rejected() -> None:
    sandbox = await start()
    try:
        await sandbox.load("good", guest("echo"))
        for garbage in (b"", b"garbage!", b"\x00asm\x01\x00\x00\x00\x01\xff\xff\xff\xff\x0f"):
            outcome = await served_during(sandbox, sandbox.load("bad", garbage))
            assert isinstance(outcome, ModuleError)
        assert "bad" not in sandbox.actors()
        with pytest.raises(ActorError, match="not loaded"):
            await sandbox.invoke("bad", "echo", b"")
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_start_function_that_never_returns() -> None:
    sandbox = await start(invocation_deadline_s=0.2)
    try:
        await sandbox.load("good", guest("echo"))
        load = sandbox.load("bad", guest("init_spin"))  # load deadline: 5 x 0.2 s
        outcome = await served_during(sandbox, asyncio.wait_for(load, 10))
        assert isinstance(outcome, InvocationTimeout)
        assert sandbox.actors() == ["good"]
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_a_worker_that_dies_fails_only_its_running_call() -> None:
    sandbox = await start()
    try:
        await with_good_and_bad(sandbox, guest("hostile"))
        hang = asyncio.ensure_future(sandbox.invoke("bad", "spin", b"", deadline=30))
        await asyncio.sleep(0.2)
        os.kill(sandbox.worker_pids()[sandbox.worker_of("bad") or 0], signal.SIGSEGV)
        outcome = await served_during(sandbox, hang)
        assert isinstance(outcome, WorkerCrashed)
        assert "signal 11" in str(outcome)
        assert (await sandbox.invoke("bad", "echo", b"again")).response == b"again"
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_repeat_offenders_are_quarantined() -> None:
    reported: list[tuple[str, str]] = []
    sandbox = Sandbox(
        budgets(invocation_deadline_s=0.3),
        host_call_handler=Recorder(),
        on_quarantine=lambda actor_id, reason: reported.append((actor_id, reason)),
        quarantine_after=3,
        quarantine_window_s=60,
    )
    async with sandbox:
        await with_good_and_bad(sandbox, guest("hostile"))
        for _ in range(3):
            outcome = await served_during(sandbox, sandbox.invoke("bad", "spin", b""))
            assert isinstance(outcome, InvocationTimeout)
        # The caller hears of the deadline at once; the strike counts when the killed
        # worker's exit has been handled, a moment later.
        for _ in range(200):
            if sandbox.quarantined():
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ActorQuarantined):
            await sandbox.invoke("bad", "echo", b"")
        assert [actor for actor, _ in reported] == ["bad"]
        assert list(sandbox.quarantined()) == ["bad"]
        with pytest.raises(ActorQuarantined):
            await sandbox.load("bad", guest("hostile"))
        assert (await sandbox.invoke("good", "echo", b"fine")).response == b"fine"
        await sandbox.unload("bad")  # forgets the quarantine: a deliberate reload is allowed
        await sandbox.load("bad", guest("hostile"))
        assert (await sandbox.invoke("bad", "echo", b"back")).response == b"back"


MUTATION_SEEDS = [guest("echo"), guest("hostile")]


@st.composite
def mutated_modules(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(MUTATION_SEEDS)))
    kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        index = draw(st.integers(0, len(data) - 1))
        value = draw(st.integers(0, 255))
        if kind == "flip":
            data[index] = value
        else:
            data.insert(index, value)
    return bytes(data)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_modules(), min_size=8, max_size=8))
def test_mutated_modules_never_crash_the_agent(modules: list[bytes]) -> None:
    async def scenario() -> None:
        async with Sandbox(
            budgets(worker_memory_limit_mb=256), host_call_handler=Recorder(), load_deadline_s=2.0
        ) as sandbox:
            await sandbox.load("good", guest("echo"))
            for index, wasm in enumerate(modules):
                try:
                    await sandbox.load(f"m{index}", wasm)
                    await sandbox.invoke(f"m{index}", "echo", b"fuzz", deadline=0.5)
                except LatticeEdgeError:
                    pass  # an error is a fine outcome; a crash of this process is not
                assert (await sandbox.invoke("good", "echo", b"alive")).response == b"alive"

    asyncio.run(scenario())
