"""Sandbox lifecycle, pipelining, host calls and worker recycling, with real workers."""

from __future__ import annotations

import asyncio

import pytest
from _sandboxkit import Recorder, budgets, guest

from agent.errors import ActorError, GuestError
from agent.runtime.sandbox import Sandbox, SandboxState


async def test_recycling_loses_and_duplicates_nothing() -> None:
    threshold = 20
    recorder = Recorder(response=b"ack")
    async with Sandbox(budgets(worker_recycle_calls=threshold), host_call_handler=recorder) as sb:
        await sb.load("echo", guest("echo"))
        await sb.load("caller", guest("hostile"))
        total = 10 * threshold

        async def one(i: int) -> None:
            payload = f"call-{i}".encode()
            if i % 2:
                assert (await sb.invoke("echo", "echo", payload)).response == payload
            else:
                result = await sb.invoke("caller", "hostcall", payload)
                assert result.response == b"ack"
                assert [h.payload for h in result.host_calls] == [payload]

        for start in range(0, total, 25):  # waves of pipelined calls across recycles
            await asyncio.gather(*(one(i) for i in range(start, min(start + 25, total))))
        # Every host call happened exactly once: nothing was run twice.
        sent = sorted(payload for *_, payload in recorder.calls)
        assert sent == sorted(f"call-{i}".encode() for i in range(0, total, 2))
        assert sb.stats.recycled >= 8
        assert sb.stats.killed == sb.stats.crashed == 0
    assert sb.state is SandboxState.CLOSED


async def test_host_calls_console_and_guest_errors() -> None:
    recorder = Recorder(response=b"pong")
    async with Sandbox(budgets(sandbox_workers=1), host_call_handler=recorder) as sb:
        await sb.load("h", guest("hostile"))
        result = await sb.invoke("h", "hostcall", b"ping")
        assert result.response == b"pong"
        (call,) = result.host_calls
        assert (call.binding, call.namespace, call.operation, call.payload) == (
            "b",
            "ns",
            "op",
            b"ping",
        )
        assert (call.response, call.error) == (b"pong", None)
        assert recorder.calls == [("h", "b", "ns", "op", b"ping")]
        assert (await sb.invoke("h", "log", b"hello")).console == ("hello",)
        assert (await sb.invoke("h", "write", b"one\ntwo")).console == ("one", "two")
        with pytest.raises(GuestError, match=r"^unknown operation$"):
            await sb.invoke("h", "?", b"")
        recorder.fail = "denied"
        with pytest.raises(GuestError, match=r"^denied$"):
            await sb.invoke("h", "hostcall", b"ping")


async def test_builtin_host_calls_by_default() -> None:
    async with Sandbox(budgets(sandbox_workers=1)) as sb:
        await sb.load("h", guest("hostile"))
        with pytest.raises(GuestError, match=r"^no link exists for ns on binding b$"):
            await sb.invoke("h", "hostcall", b"")


async def test_lifecycle_errors() -> None:
    sandbox = Sandbox(budgets(sandbox_workers=1, max_actors=2))
    assert sandbox.state is SandboxState.NEW
    async with sandbox as sb:
        assert sb.state is SandboxState.RUNNING
        with pytest.raises(ActorError, match="not loaded"):
            await sb.invoke("missing", "echo", b"")
        await sb.load("a", guest("echo"))
        await sb.load("a", guest("echo"))  # reloading an id replaces it
        await sb.load("b", guest("echo"))
        with pytest.raises(ActorError, match="2 actors loaded"):
            await sb.load("c", guest("echo"))
        assert sb.actors() == ["a", "b"]
        await sb.unload("a")
        await sb.unload("a")  # idempotent
        with pytest.raises(ActorError, match="not loaded"):
            await sb.invoke("a", "echo", b"")
        assert (await sb.invoke("b", "echo", b"still")).response == b"still"
        assert len(sb.worker_pids()) == 1
    assert sandbox.state is SandboxState.CLOSED
    with pytest.raises(ActorError, match="closed"):
        await sandbox.invoke("b", "echo", b"")
    with pytest.raises(ActorError):
        await sandbox.__aenter__()


async def test_exceptions_in_the_body_propagate_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with Sandbox(budgets(sandbox_workers=1)) as sb:
            await sb.load("a", guest("echo"))
            raise KeyError("mine")


async def test_pipelined_calls_share_workers_and_keep_their_answers() -> None:
    async with Sandbox(budgets()) as sb:
        for name in ("a", "b", "c"):
            await sb.load(name, guest("echo"))
        names = ["a", "b", "c"]
        results = await asyncio.gather(
            *(sb.invoke(names[i % 3], "echo", i.to_bytes(4, "big")) for i in range(300))
        )
        assert [r.response for r in results] == [i.to_bytes(4, "big") for i in range(300)]
        big = bytes(range(256)) * 2048  # 512 KiB, grows the guest's memory
        assert (await sb.invoke("a", "echo", big)).response == big
