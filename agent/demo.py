"""``lattice-edge demo``: the whole tour, non-interactively.

Starts a host on an embedded default of its own (a temporary data directory, free
loopback ports), then, through the lattice only — as a cloud operator would — pings it,
starts the demo actor, invokes it, shows its inventory, and stops the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import Config, HostPort, LeafSettings, embedded_default
from agent.errors import AgentStateError
from agent.host import HostInfo
from agent.identity.keys import KeyPair
from agent.lattice.client import connect_local
from agent.launch import prepare_host
from agent.runtime.demo import demo_actor_bytes

__all__ = ["run_demo"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_demo(say: Callable[[str], None], *, echo_calls: int = 200) -> None:
    """Run the tour, reporting each step through ``say``."""
    with tempfile.TemporaryDirectory(prefix="lattice-edge-demo-") as scratch:
        base = embedded_default()
        leaf: LeafSettings = dataclasses.replace(
            base.leaf,
            listen=HostPort("127.0.0.1", _free_port()),
            monitor=HostPort("127.0.0.1", _free_port()),
        )
        config = dataclasses.replace(
            base, leaf=leaf, host=dataclasses.replace(base.host, data_dir=Path(scratch))
        )
        host = prepare_host(config, create_keys=True)
        ready: asyncio.Future[HostInfo] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(host.run(on_ready=ready.set_result))
            pending: set[asyncio.Future[Any]] = {ready, runner}
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                raise AgentStateError("the demo host stopped before it was ready")
            info = ready.result()
            say(f"1. host {info.host_id} is up, local lattice {info.client_url}")
            try:
                await _tour(say, config, host.keys.cluster, info, echo_calls)
            finally:
                host.request_stop()
            await runner
        say("6. host stopped cleanly")


async def _tour(
    say: Callable[[str], None], config: Config, cluster_key: KeyPair, info: HostInfo, calls: int
) -> None:
    host_id = info.host_id
    async with connect_local(config) as client:
        hosts = await client.ping()
        names = ", ".join(f"{h.get('friendly_name')} ({h.get('id')})" for h in hosts)
        say(f"2. ping.hosts answered by {len(hosts)} host(s): {names}")
        reference = await client.upload_module(demo_actor_bytes())
        started = await client.start_actor(host_id, reference)
        actor_id = started["public_key"]
        say(f"3. started actor {started['claims'].get('name')} {actor_id}")
        greeting = await client.invoke(
            actor_id, "Greet", b"lattice", cluster_key=cluster_key, host_id=host_id
        )
        say(
            f"4. Greet over the lattice -> {greeting.response.decode()!r} "
            f"in {greeting.seconds * 1000:.2f} ms"
        )
        payload = bytes(range(256)) * 4
        times = []
        for _ in range(calls):
            reply = await client.invoke(
                actor_id, "Echo", payload, cluster_key=cluster_key, host_id=host_id
            )
            if reply.response != payload:
                raise AgentStateError("the echo came back different")
            times.append(reply.seconds)
        say(
            f"5. {calls} x 1 KiB Echo round trips: "
            f"median {statistics.median(times) * 1000:.2f} ms, all answers correct"
        )
        inventory = await client.inventory(host_id)
        actors = ", ".join(a["name"] for a in inventory.get("actors", []))
        say(f"   inventory: actors [{actors}], labels {len(inventory.get('labels', {}))}")
        await client.command(host_id, "stop", {"host_id": host_id})
        say("   sent cmd.stop")
