"""Workers forked by the zygote: the agent's children, hardened, and never lost with it."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest
from _sandboxkit import budgets, guest

from agent.errors import InvocationTimeout
from agent.runtime import zygote as zygote_module
from agent.runtime.sandbox import Sandbox

pytestmark = pytest.mark.skipif(not zygote_module.SUPPORTED, reason="no zygote on this platform")


async def test_forked_workers_are_the_agents_hardened_children() -> None:
    async with Sandbox(budgets(sandbox_workers=2, worker_memory_limit_mb=256)) as sb:
        await sb.load("a", guest("echo"))
        await sb.load("b", guest("echo"))
        assert (await sb.invoke("a", "echo", b"hi")).response == b"hi"
        assert sb._zygote is not None and sb._zygote.forks == 2
        zygote_pid = sb._zygote.pid
        assert zygote_pid is not None
        for pid in sb.worker_pids():
            worker = psutil.Process(pid)
            assert worker.ppid() == os.getpid()  # CLONE_PARENT: ours, not the zygote's
            assert worker.rlimit(psutil.RLIMIT_AS) == (256 << 20, 256 << 20)
            assert os.getsid(pid) == pid  # its own session
            with open(f"/proc/{pid}/status") as status:
                assert any(line.startswith("PPid:") for line in status)
        assert zygote_pid not in sb.worker_pids()
    assert not psutil.pid_exists(zygote_pid) or psutil.Process(zygote_pid).status() == "zombie"


async def test_a_dead_zygote_loses_nothing_and_is_replaced() -> None:
    async with Sandbox(budgets(sandbox_workers=1, worker_recycle_calls=40)) as sb:
        await sb.load("echo", guest("echo"))
        assert sb._zygote is not None
        first = sb._zygote.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # its workers are the agent's children: they live on
        payloads = [f"call-{i}".encode() for i in range(400)]
        results = await asyncio.gather(*(sb.invoke("echo", "echo", p) for p in payloads))
        assert [r.response for r in results] == payloads
        assert sb.stats.recycled >= 5
        assert sb.stats.killed == sb.stats.crashed == 0
        assert sb._zygote.starts == 2 and sb._zygote.pid not in (None, first)


async def test_deadline_kill_of_a_forked_worker_is_exact() -> None:
    async with Sandbox(budgets(sandbox_workers=1), deadline_s=0.3) as sb:
        await sb.load("loop", guest("hostile"))
        await sb.load("echo", guest("echo"))
        pid = sb.worker_pids()[0]
        with pytest.raises(InvocationTimeout):
            await sb.invoke("loop", "spin", b"")
        assert (await sb.invoke("echo", "echo", b"after")).response == b"after"
        assert sb.worker_pids()[0] != pid
        assert sb.stats.killed == 1
        assert not psutil.pid_exists(pid)  # reaped, not left a zombie


async def test_without_a_zygote_workers_are_spawned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote_module, "START_TIMEOUT_S", 0.001)  # it can never be ready
    async with Sandbox(budgets(sandbox_workers=1)) as sb:
        await sb.load("echo", guest("echo"))
        assert (await sb.invoke("echo", "echo", b"x")).response == b"x"
        assert sb._zygote is not None and sb._zygote.forks == 0
        assert psutil.Process(sb.worker_pids()[0]).ppid() == os.getpid()


def test_the_zygote_refuses_bad_requests() -> None:
    import socket
    import subprocess
    import sys

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.runtime.worker", "--zygote", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        env=zygote_module.worker_env(),
    )
    theirs.close()
    try:
        ours.settimeout(30)
        assert ours.recv(64) == b"ready"
        ours.send(b"not a number")
        assert ours.recv(64) == b"-22"
        read, write = os.pipe()
        socket.send_fds(ours, [b"64"], [read])  # too few fds
        os.close(read)
        os.close(write)
        assert ours.recv(64) == b"-22"
    finally:
        ours.close()
        assert process.wait(10) == 0
