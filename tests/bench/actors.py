"""Actor throughput, cold load and memory: the sandbox against in-process wasm3, same run.

Prints one JSON line per figure. Each sandbox figure carries ``ratio``: its rate divided by
the in-process rate of the same 1 KiB echo module measured in this run, because these
machines are noisy. Usage: ``python tests/bench/actors.py [--seconds S] [--workers N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from agent.runtime.sandbox import Sandbox
from agent.runtime.wapc import WapcInstance
from profiles import load_profile

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "fixtures" / "sandbox_guests" / "echo.wasm"
BIG = REPO / "tests" / "fixtures" / "guests" / "big.wasm"  # the echo plus 200 KB of data
PAYLOAD = os.urandom(1024)


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def in_process_rate(wasm: bytes, seconds: float) -> float:
    instance = WapcInstance(wasm)
    count, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        for _ in range(500):
            instance.invoke("echo", PAYLOAD)
        count += 500
    return count / elapsed


async def timed(seconds: float, batch: Callable[[], Awaitable[int]]) -> float:
    count, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        count += await batch()
    return count / elapsed


async def sandbox_figures(wasm: bytes, workers: int, seconds: float, baseline: float) -> None:
    budgets = load_profile("generic-x86_64").budgets.replace(sandbox_workers=workers)
    async with Sandbox(budgets) as sandbox:
        actors = [f"echo{i}" for i in range(workers)]
        for actor in actors:
            await sandbox.load(actor, wasm)
        await sandbox.invoke(actors[0], "echo", PAYLOAD)

        async def sequential() -> int:
            for _ in range(100):
                await sandbox.invoke(actors[0], "echo", PAYLOAD)
            return 100

        async def caller(actor: str, count: int) -> None:
            for _ in range(count):
                await sandbox.invoke(actor, "echo", PAYLOAD)

        async def one_caller_per_worker() -> int:
            await asyncio.gather(*(caller(actor, 100) for actor in actors))
            return 100 * workers

        depth = 64  # callers in flight per worker

        async def pipelined() -> int:
            await asyncio.gather(*(caller(actors[i % workers], 20) for i in range(depth * workers)))
            return 20 * depth * workers

        for name, batch, extra in (
            ("sandbox_echo_1KiB_sequential", sequential, {}),
            ("sandbox_echo_1KiB_one_caller_per_worker", one_caller_per_worker, {}),
            ("sandbox_echo_1KiB_pipelined", pipelined, {"in_flight": depth * workers}),
        ):
            rate = await timed(seconds, batch)
            emit(name, per_s=round(rate), ratio=round(rate / baseline, 3), workers=workers, **extra)


async def load_figures(wasm: bytes, rounds: int) -> None:
    budgets = load_profile("generic-x86_64").budgets.replace(sandbox_workers=1)
    in_process = []
    for _ in range(rounds):
        began = time.perf_counter()
        WapcInstance(wasm)
        in_process.append(time.perf_counter() - began)
    async with Sandbox(budgets) as sandbox:
        cold = []
        for index in range(rounds):
            began = time.perf_counter()
            await sandbox.load(f"big{index}", wasm)
            cold.append(time.perf_counter() - began)
    sandbox_ms = statistics.median(cold) * 1000
    in_process_ms = statistics.median(in_process) * 1000
    emit(
        "cold_load_200KB_actor",
        module_bytes=len(wasm),
        sandbox_ms=round(sandbox_ms, 2),
        in_process_ms=round(in_process_ms, 2),
        ratio=round(in_process_ms / sandbox_ms, 3),
    )


async def memory_figures(wasm: bytes, count: int) -> None:
    budgets = load_profile("generic-x86_64").budgets.replace(sandbox_workers=1, max_actors=count)
    async with Sandbox(budgets) as sandbox:
        await sandbox.load("warm", wasm)
        await sandbox.invoke("warm", "echo", PAYLOAD)
        (pid,) = sandbox.worker_pids()
        worker = psutil.Process(pid)
        before = worker.memory_full_info()
        for index in range(count - 1):
            await sandbox.load(f"m{index}", wasm)
            await sandbox.invoke(f"m{index}", "echo", PAYLOAD)
        after = worker.memory_full_info()
    emit(
        "memory_per_loaded_actor",
        module_bytes=len(wasm),
        actors=count - 1,
        rss_kib=round((after.rss - before.rss) / 1024 / (count - 1), 1),
        pss_kib=round((after.pss - before.pss) / 1024 / (count - 1), 1),
        worker_idle_rss_mib=round(before.rss / 2**20, 1),
        worker_idle_pss_mib=round(before.pss / 2**20, 1),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each rate run")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    args = parser.parse_args()
    wasm = ECHO.read_bytes()
    emit(
        "machine",
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
    )
    baseline = in_process_rate(wasm, args.seconds)
    emit("in_process_echo_1KiB", per_s=round(baseline))
    asyncio.run(sandbox_figures(wasm, args.workers, args.seconds, baseline))
    after = in_process_rate(wasm, args.seconds)  # the machine may have changed meanwhile
    emit("in_process_echo_1KiB_after", per_s=round(after))
    big = BIG.read_bytes() if BIG.is_file() else wasm
    asyncio.run(load_figures(big, rounds=20))
    asyncio.run(memory_figures(big, count=21))
    return 0


if __name__ == "__main__":
    sys.exit(main())
