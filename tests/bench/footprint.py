"""Footprint of an idle agent and its leaf, and start-to-ready time against a bare
nats-server measured in the same run.

    .venv/bin/python tests/bench/footprint.py [--runs 5] [--idle 10]

Prints one JSON line per figure. Memory is RSS and PSS (psutil) of the agent process and
its nats-server child after ``--idle`` seconds; times are medians over ``--runs`` starts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lattice_testing import AgentProcess, free_port, http_json, run_cli, wait_until

from agent.leaf.binary import find_nats_server


def emit(figure: str, **values: object) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def bare_start(binary: Path, workdir: Path) -> float:
    """Seconds from spawn to /healthz for a bare nats-server with JetStream."""
    client, monitor = free_port(), free_port()
    conf = workdir / f"bare-{client}.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n"
        f'jetstream {{ store_dir: "{workdir / f"js-{client}"}" }}\n'
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: http_json(monitor, "/healthz"), 30, "bare nats-server", step=0.005)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()


def init_agent(workdir: Path) -> tuple[Path, Path]:
    config, data = workdir / "agent.toml", workdir / "data"
    result = run_cli(
        "init", "--config", str(config), "--data-dir", str(data),
        "--listen", f"127.0.0.1:{free_port()}", "--monitor", f"127.0.0.1:{free_port()}",
        "--force",
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return config, data


def agent_start(config: Path, data: Path) -> tuple[float, AgentProcess]:
    """Seconds from spawn to 'ready' (leaf healthy and agent connected to it)."""
    started = time.perf_counter()
    agent = AgentProcess(config, data).start()
    wait_until(agent.state, 60, "the agent", step=0.005)
    return time.perf_counter() - started, agent


def memory(pid: int) -> dict[str, float]:
    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": round(info.rss / 2**20, 1), "pss_mb": round(info.pss / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    server = find_nats_server()
    emit(
        "machine",
        python=platform.python_version(),
        arch=platform.machine(),
        cpus=psutil.cpu_count(),
        nats_server=server.version_text,
    )
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        config, data = init_agent(workdir)
        bare, ours = [], []
        for _ in range(args.runs):  # interleaved so drift hits both alike
            bare.append(bare_start(server.path, workdir))
            seconds, agent = agent_start(config, data)
            ours.append(seconds)
            agent.terminate()
        emit(
            "start_to_ready",
            bare_nats_server_s=round(statistics.median(bare), 3),
            agent_s=round(statistics.median(ours), 3),
            ratio=round(statistics.median(ours) / statistics.median(bare), 1),
            runs=args.runs,
        )

        _, agent = agent_start(config, data)
        try:
            time.sleep(args.idle)
            assert agent.process is not None
            leaf_pid = agent.leaf_pid()
            assert leaf_pid is not None
            agent_mem, leaf_mem = memory(agent.process.pid), memory(leaf_pid)
            workers = [
                memory(child.pid)
                for child in psutil.Process(agent.process.pid).children()
                if child.pid != leaf_pid
            ]
            emit(
                "idle_memory",
                idle_s=args.idle,
                agent=agent_mem,
                nats_server=leaf_mem,
                total_pss_mb=round(agent_mem["pss_mb"] + leaf_mem["pss_mb"], 1),
                goal_pss_mb=45,
                sandbox_workers=workers,
                whole_stack_pss_mb=round(
                    agent_mem["pss_mb"] + leaf_mem["pss_mb"] + sum(w["pss_mb"] for w in workers),
                    1,
                ),
            )
        finally:
            agent.terminate()


if __name__ == "__main__":
    main()
