"""``lattice-edge status``: is the agent up, is its leaf up, is the uplink connected, and
how is the device doing. Read from the agent's state file, the leaf's monitoring
endpoint and psutil, so it works from any shell on the device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.fleet_state import credentials_status
from agent.host import STATE_FILE
from agent.leaf.monitor import MonitorError, get_json
from agent.resources import device_resources
from agent.running import pid_alive

__all__ = ["gather_status"]


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def _leaf_status(config: Config) -> dict[str, Any]:
    monitor = config.leaf.monitor
    result: dict[str, Any] = {"monitor_url": f"http://{monitor}", "up": False}
    try:
        health_code, _ = await get_json(monitor, "/healthz")
        _, varz = await get_json(monitor, "/varz")
        _, leafz = await get_json(monitor, "/leafz")
    except MonitorError as exc:
        result["error"] = str(exc)
        return result
    result["up"] = health_code == 200
    if isinstance(varz, dict):
        result.update(
            server_name=varz.get("server_name"),
            version=varz.get("version"),
            connections=varz.get("connections"),
            memory_bytes=varz.get("mem"),
        )
    if config.leaf.mqtt_listen is not None:
        from agent.leaf.mqtt import mqtt_status

        try:
            _, connz = await get_json(monitor, "/connz?auth=1&limit=1024")
        except MonitorError as exc:
            connz = None
            result["error"] = str(exc)
        result["mqtt"] = mqtt_status(str(config.leaf.mqtt_listen), connz)
    remotes = leafz.get("leafs") if isinstance(leafz, dict) else None
    result["upstream_links"] = [
        {"address": f"{r.get('ip')}:{r.get('port')}", "account": r.get("account"),
         "rtt": r.get("rtt")}
        for r in (remotes or []) if isinstance(r, dict)
    ]  # fmt: skip
    return result


async def _from_agent(
    config: Config, host_id: str, timeout: float = 5.0
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The running actors (the host's lattice inventory) and the agent's health report;
    empty when the agent cannot be reached."""
    from agent.errors import LatticeEdgeError
    from agent.lattice import subjects
    from agent.lattice.client import connect_local

    try:
        async with connect_local(config, connect_timeout=min(timeout, 3.0)) as client:
            inventory = await client.inventory(host_id, timeout=timeout)
            health = await client.request(subjects.agent_health(host_id), timeout=timeout)
    except LatticeEdgeError:
        return [], None
    actors = [
        {"id": a.get("id"), "name": a.get("name"), "instances": len(a.get("instances", [])),
         "image_ref": a.get("image_ref")}
        for a in inventory.get("actors", []) if isinstance(a, dict)
    ]  # fmt: skip
    return actors, health if isinstance(health, dict) else None


def _binary(config: Config, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which nats-server runs (the agent's run file) or would run (the same search)."""
    if state is not None and state.get("nats_server"):
        return {"path": state.get("nats_server"), "version": state.get("nats_server_version"),
                "chosen": "running"}  # fmt: skip
    from agent.errors import LeafError
    from agent.leaf.binary import find_nats_server

    try:
        server = find_nats_server(config.leaf.nats_server)
    except LeafError as exc:
        return {"path": None, "version": None, "chosen": str(exc)}
    how = "leaf.nats_server" if config.leaf.nats_server else "the newest found"
    return {"path": str(server.path), "version": server.version_text, "chosen": how}


async def gather_status(
    config: Config, profile_name: str, *, timeout: float = 5.0
) -> dict[str, Any]:
    """Everything ``status`` shows, as a JSON-ready dict; ``timeout`` bounds each request
    to the agent."""
    state = _read_state(config.run_dir / STATE_FILE)
    agent_up = state is not None and pid_alive(state.get("pid"))
    leaf = await _leaf_status(config)
    leaf["binary"] = _binary(config, state if agent_up else None)
    configured = list(config.upstream.urls) if config.upstream else []
    host_id = state.get("host_id") if state else None
    actors: list[dict[str, Any]] = []
    health: dict[str, Any] | None = None
    if agent_up and isinstance(host_id, str):
        actors, health = await _from_agent(config, host_id, timeout)
    return {
        "agent": {
            "up": agent_up,
            "pid": state.get("pid") if agent_up and state else None,
            "host_id": state.get("host_id") if state else None,
            "version": state.get("version") if state else None,
            "client_url": f"nats://{config.leaf.listen}",
        },
        "leaf": leaf,
        "upstream": {
            "configured": configured,
            "connected": bool(leaf.get("upstream_links")),
        },
        "actors": actors,
        "health": health,
        "credentials": credentials_status(config),
        "forward": health.get("forward") if health else None,
        "profile": state.get("profile") if agent_up and state else profile_name,
        "device": device_resources(config.host.data_dir, cpu_sample_s=0.2),
    }
