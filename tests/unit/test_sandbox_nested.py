"""Nested invocations: a host-call handler invokes actors living in the same worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from _sandboxkit import DEADLINE, budgets, guest

from agent.errors import ActorError, GuestError, InvocationTimeout, WorkerCrashed
from agent.runtime.sandbox import Sandbox

Route = Callable[[Sandbox, str, bytes], Awaitable[bytes]]


class Router:
    """A host-call handler that hands each call to ``route(sandbox, caller, payload)``."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.sandbox: Sandbox | None = None
        self.errors: list[BaseException] = []

    async def __call__(
        self, actor_id: str, binding: str, namespace: str, operation: str, payload: bytes
    ) -> bytes:
        assert self.sandbox is not None
        try:
            return await self.route(self.sandbox, actor_id, payload)
        except Exception as exc:
            self.errors.append(exc)
            raise


async def single_worker(route: Route, **changes: object) -> tuple[Sandbox, Router]:
    router = Router(route)
    sandbox = Sandbox(budgets(sandbox_workers=1, **changes), host_call_handler=router)
    router.sandbox = await sandbox.__aenter__()
    return sandbox, router


async def test_a_handler_invokes_another_actor_in_the_same_worker() -> None:
    async def route(sb: Sandbox, caller: str, payload: bytes) -> bytes:
        assert caller == "a"
        return (await sb.invoke("b", "echo", b"B says " + payload)).response

    sandbox, router = await single_worker(route)
    try:
        await sandbox.load("a", guest("hostile"))
        await sandbox.load("b", guest("echo"))
        assert sandbox.worker_of("a") == sandbox.worker_of("b") == 0
        began = time.monotonic()
        result = await sandbox.invoke("a", "hostcall", b"hi")
        assert time.monotonic() - began < DEADLINE / 2  # served at once, no deadline stall
        assert result.response == b"B says hi"
        assert [(h.payload, h.response, h.error) for h in result.host_calls] == [
            (b"hi", b"B says hi", None)
        ]
        # Many at once: nested calls interleave with outer ones in the one worker.
        results = await asyncio.gather(
            *(sandbox.invoke("a", "hostcall", str(i).encode()) for i in range(30))
        )
        assert [r.response for r in results] == [f"B says {i}".encode() for i in range(30)]
        assert router.errors == []
        assert sandbox.stats.killed == sandbox.stats.crashed == 0
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_a_call_back_into_a_running_instance_is_refused_not_hung() -> None:
    async def route(sb: Sandbox, caller: str, payload: bytes) -> bytes:
        if caller == "a" and payload == b"self":
            return (await sb.invoke("a", "echo", payload)).response  # A -> A
        if caller == "a":
            return (await sb.invoke("b", "hostcall", payload)).response  # A -> B -> ...
        return (await sb.invoke("a", "echo", payload)).response  # ... -> A

    sandbox, router = await single_worker(route)
    try:
        await sandbox.load("a", guest("hostile"))
        await sandbox.load("b", guest("hostile"))
        for payload, path in ((b"self", "a -> a"), (b"cycle", "a -> b -> a")):
            began = time.monotonic()
            with pytest.raises(GuestError, match="not re-entrant") as caught:
                await sandbox.invoke("a", "hostcall", payload)
            assert time.monotonic() - began < DEADLINE / 2
            assert f"({path})" in str(caught.value)
        assert all(isinstance(e, ActorError) for e in router.errors)
        # The refusals left both instances healthy.
        assert (await sandbox.invoke("a", "echo", b"fine")).response == b"fine"
        assert (await sandbox.invoke("b", "echo", b"fine")).response == b"fine"
        assert sandbox.stats.killed == sandbox.stats.crashed == 0
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_a_chain_through_several_actors_of_one_worker() -> None:
    chain = ["a", "b", "c", "d"]

    async def route(sb: Sandbox, caller: str, payload: bytes) -> bytes:
        callee = chain[chain.index(caller) + 1]
        operation = "echo" if callee == chain[-1] else "hostcall"
        return (await sb.invoke(callee, operation, payload + callee.encode())).response

    sandbox, _ = await single_worker(route)
    try:
        for actor_id in chain:
            await sandbox.load(actor_id, guest("hostile"))
        assert (await sandbox.invoke("a", "hostcall", b">")).response == b">bcd"
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_requests_for_a_busy_actor_wait_and_others_run_meanwhile() -> None:
    release = asyncio.Event()

    async def route(sb: Sandbox, caller: str, payload: bytes) -> bytes:
        await release.wait()
        return payload

    sandbox, _ = await single_worker(route, invocation_deadline_s=5.0)
    try:
        await sandbox.load("a", guest("hostile"))
        await sandbox.load("b", guest("echo"))
        outer = asyncio.ensure_future(sandbox.invoke("a", "hostcall", b"outer"))
        await asyncio.sleep(0.05)  # A now waits for its host reply
        queued = asyncio.ensure_future(sandbox.invoke("a", "echo", b"queued"))
        # B runs while A waits: the worker is not blocked by A's host call.
        assert (await sandbox.invoke("b", "echo", b"meanwhile")).response == b"meanwhile"
        await asyncio.sleep(0.05)
        assert not outer.done() and not queued.done()  # A is not re-entered
        release.set()
        assert (await outer).response == b"outer"
        assert (await queued).response == b"queued"
    finally:
        await sandbox.__aexit__(None, None, None)


async def test_a_nested_call_past_its_deadline_kills_the_worker_and_fails_its_caller() -> None:
    nested: list[BaseException] = []

    async def route(sb: Sandbox, caller: str, payload: bytes) -> bytes:
        try:
            return (await sb.invoke("b", "spin", b"", deadline=0.3)).response
        except ActorError as exc:
            nested.append(exc)
            raise

    sandbox, _ = await single_worker(route, invocation_deadline_s=5.0)
    try:
        await sandbox.load("a", guest("hostile"))
        await sandbox.load("b", guest("hostile"))
        await sandbox.load("c", guest("echo"))
        before = sandbox.worker_pids()
        outer = asyncio.ensure_future(sandbox.invoke("a", "hostcall", b""))
        await asyncio.sleep(0.1)  # B spins on top of A now
        behind = [
            asyncio.ensure_future(sandbox.invoke(actor, "echo", actor.encode()))
            for actor in ("b", "c", "a")
        ]
        began = time.monotonic()
        with pytest.raises(WorkerCrashed, match="waiting for a host call"):
            await outer
        assert time.monotonic() - began < 1.0  # B's own 0.3 s deadline, not A's 5 s
        assert len(nested) == 1 and isinstance(nested[0], InvocationTimeout)
        # Never started in the dead worker: sent again, and run once, in the new one.
        assert [r.response for r in await asyncio.gather(*behind)] == [b"b", b"c", b"a"]
        assert sandbox.worker_pids() != before
        assert sandbox.stats.killed == 1
        assert sandbox.stats.resent == 3
    finally:
        await sandbox.__aexit__(None, None, None)
