"""Packing: a sandbox that starts one worker and adds the next only when it is full."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.runtime.sandbox import Sandbox
from profiles import load_profile

ECHO = (Path(__file__).resolve().parents[1] / "fixtures" / "guests" / "echo.wasm").read_bytes()


async def test_workers_are_spawned_as_actors_need_them() -> None:
    budgets = dataclasses.replace(load_profile("pi4b").budgets, sandbox_workers=2)
    async with Sandbox(budgets, pack=2) as sandbox:
        await sandbox.load("a", ECHO)
        await sandbox.load("b", ECHO)
        assert len(sandbox.worker_pids()) == 1
        assert sandbox.worker_of("a") == sandbox.worker_of("b") == 0
        await sandbox.load("c", ECHO)
        assert len(sandbox.worker_pids()) == 2 and sandbox.worker_of("c") == 1
        await sandbox.load("d", ECHO)
        await sandbox.load("e", ECHO)  # both full and no more workers allowed: least loaded
        assert len(sandbox.worker_pids()) == 2
        for actor in "abcde":
            assert (await sandbox.invoke(actor, "echo", actor.encode())).response == actor.encode()
