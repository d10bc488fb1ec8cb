"""Firmware bridge: OTA throughput over a pty against the raw line rate, and whole-stack
memory with and without a firmware device.

    .venv/bin/python tests/bench/firmware.py [--idle 10] [--runs 3] [--image-kb 96] \
        [--baseline-tree DIR] [--skip-ota] [--skip-memory]

Prints one JSON line per figure.

* ``ota_throughput`` — a signed image uploaded (and tested, reset, confirmed) by the bridge to
  the simulator, a separate ``lattice-edge firmware simulate --pty --baud B`` process that
  paces its pty like a UART at B baud (8N1: ten bit times per byte; a pty has no line rate of
  its own). The baseline, measured in the same run over the same kind of paced pty, is the
  image's bytes sent raw with no protocol; ``ratio`` = upload goodput / raw rate.
* ``whole_stack_memory`` — PSS of agent + nats-server leaf + sandbox workers after ``--idle``
  seconds, with no firmware device and with one (the simulator's own process not counted).
  ``--baseline-tree`` runs the no-device agent from another checkout too (the commit this
  work started from: ``git archive $(git merge-base HEAD main) | tar -x -C DIR``), so the
  change of the no-device footprint is measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from firmware_testing import make_key, put_image, running_bridge, sign_image
from footprint import init_agent
from lattice_testing import CLI, AgentProcess, start_nats_server, stop_process, wait_until

from agent.config import FirmwareDevice


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def raw_line_rate(size: int, baud: int) -> float:
    """Bytes/s of ``size`` raw bytes through a pty whose reader is paced at ``baud``."""
    master, slave = os.openpty()
    tty.setraw(slave)
    received = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal received
        while received < size:
            chunk = os.read(master, 4096)
            received += len(chunk)
            time.sleep(len(chunk) * 10 / baud)  # the simulator's pacing
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    started = time.perf_counter()
    thread.start()
    payload = os.urandom(size)
    view = memoryview(payload)
    while view:
        written = os.write(slave, view[:4096])
        view = view[written:]
    done.wait(600)
    seconds = time.perf_counter() - started
    os.close(master)
    os.close(slave)
    return size / seconds


async def ota_once(workdir: Path, baud: int, image_kb: int) -> dict[str, float]:
    key = make_key(workdir, f"bench-{baud}", "ed25519")
    image = sign_image(workdir, key, "2.0.0", size=image_kb * 1024, seed=baud % 251)
    link = workdir / f"tty-{baud}"
    simulator = subprocess.Popen(
        [CLI, "firmware", "simulate", "--pty", "--link", str(link), "--baud", str(baud),
         "--key", str(key.public), "--boot-s", "0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = start_nats_server(workdir / f"nats-{baud}")
    try:
        wait_until(link.exists, 15, "the simulator")
        device = FirmwareDevice("bench", "serial", str(link), baud, None, None, 2.0)
        async with running_bridge(server.url, [device], workdir / f"data-{baud}",
                                  trusted_keys=(key.public,), health_window_s=0.5,
                                  telemetry_period_s=3600) as harness:  # fmt: skip
            assert await harness.bridge.devices["bench"].wait_online(20)
            ref = await put_image(harness.nats, image)
            began = time.perf_counter()
            answer, _ = await harness.call("bench", "update", {"image": ref}, timeout=60)
            await harness.wait_event("progress", update_id=answer["update_id"], step="testing",
                                     timeout=900)  # fmt: skip
            upload_s = time.perf_counter() - began
            finished = await harness.finished(answer["update_id"], timeout=900)
            assert finished["type"].endswith("succeeded"), finished
            total_s = time.perf_counter() - began
    finally:
        stop_process(simulator)
        server.stop()
    size = image.stat().st_size
    return {"bytes": size, "upload_s": upload_s, "total_s": total_s}


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (the pages only this process has: the steadiest of the three)."""
    info = psutil.Process(pid).memory_full_info()
    return {key: round(getattr(info, key) / 2**20, 1) for key in ("rss", "pss", "uss")}


def whole_stack(agent: AgentProcess) -> dict[str, object]:
    assert agent.process is not None
    leaf_pid = agent.leaf_pid()
    assert leaf_pid is not None
    agent_mem, leaf_mem = memory(agent.process.pid), memory(leaf_pid)
    workers = [memory(c.pid) for c in psutil.Process(agent.process.pid).children()
               if c.pid != leaf_pid]  # fmt: skip
    total = agent_mem["pss"] + leaf_mem["pss"] + sum(w["pss"] for w in workers)
    return {"agent": agent_mem, "nats_server": leaf_mem, "workers": workers,
            "whole_stack_pss_mb": round(total, 1)}  # fmt: skip


def idle_stack(
    config: Path, data: Path, idle: float, env: dict[str, str] | None = None
) -> dict[str, object]:
    agent = AgentProcess(config, data, env=env).start()
    try:
        agent.wait_ready(60)
        time.sleep(idle)
        return whole_stack(agent)
    finally:
        agent.terminate()


def change(after: dict[str, object], before: dict[str, object]) -> float:
    return round(
        float(str(after["whole_stack_pss_mb"])) - float(str(before["whole_stack_pss_mb"])), 1
    )


def agent_uss(stack: dict[str, object]) -> float:
    agent = stack["agent"]
    assert isinstance(agent, dict)
    return round(float(agent["uss"]), 1)


def median_stack(runs: list[dict[str, object]]) -> dict[str, object]:
    """The run with the median whole-stack PSS, and every run's total."""
    ordered = sorted(runs, key=lambda r: float(str(r["whole_stack_pss_mb"])))
    middle = dict(ordered[len(ordered) // 2])
    middle["runs_pss_mb"] = [r["whole_stack_pss_mb"] for r in runs]
    return middle


def memory_figures(workdir: Path, idle: float, baseline_tree: Path | None, runs: int) -> None:
    config, data = init_agent(workdir)
    plain = config.read_text()
    if baseline_tree is not None:
        # Byte-compile it first: an agent that compiles its sources on import is bigger.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(baseline_tree)], check=True)
    ours, theirs = [], []
    for _ in range(runs):  # interleaved so drift hits both alike
        ours.append(idle_stack(config, data, idle))
        if baseline_tree is not None:
            theirs.append(idle_stack(config, data, idle, {"PYTHONPATH": str(baseline_tree)}))
    without = median_stack(ours)
    figures: dict[str, object] = {"idle_s": idle, "runs": runs, "without_firmware": without}
    if theirs:
        base = median_stack(theirs)
        figures["baseline_tree_without_firmware"] = base
        figures["no_device_change_mb"] = change(without, base)
        figures["no_device_agent_uss_change_mb"] = round(agent_uss(without) - agent_uss(base), 1)
    link = workdir / "tty-mem"
    simulator = subprocess.Popen([CLI, "firmware", "simulate", "--pty", "--link", str(link)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(link.exists, 15, "the simulator")
        config.write_text(plain + f'\n[[firmware.devices]]\nname = "sim0"\nport = "{link}"\n')
        with_one = median_stack([idle_stack(config, data, idle) for _ in range(runs)])
    finally:
        stop_process(simulator)
        config.write_text(plain)
    figures["with_one_device"] = with_one
    figures["one_device_costs_mb"] = change(with_one, without)
    figures["one_device_agent_uss_mb"] = round(agent_uss(with_one) - agent_uss(without), 1)
    emit("whole_stack_memory", **figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--image-kb", type=int, default=96)
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-ota", action="store_true")
    parser.add_argument("--runs", type=int, default=3, help="idle agents per memory figure")
    args = parser.parse_args()
    emit("machine", python=platform.python_version(), arch=platform.machine(),
         cpus=psutil.cpu_count())  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for baud in () if args.skip_ota else (115200, 1_000_000):
            raw = raw_line_rate(args.image_kb * 1024, baud)
            ota = asyncio.run(ota_once(workdir, baud, args.image_kb))
            goodput = ota["bytes"] / ota["upload_s"]
            emit(
                "ota_throughput", baud=baud, image_bytes=int(ota["bytes"]),
                raw_line_rate_bytes_s=round(raw), nominal_line_rate_bytes_s=baud // 10,
                upload_s=round(ota["upload_s"], 2), upload_goodput_bytes_s=round(goodput),
                ratio=round(goodput / raw, 3), whole_update_s=round(ota["total_s"], 2),
            )  # fmt: skip
        if not args.skip_memory:
            memory_figures(workdir, args.idle, args.baseline_tree, args.runs)


if __name__ == "__main__":
    main()
