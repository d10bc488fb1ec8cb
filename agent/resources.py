"""What the device has left: memory, CPU, disk and temperature, read with psutil."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["device_resources"]


def device_resources(data_dir: Path, *, cpu_sample_s: float | None = None) -> dict[str, Any]:
    """Memory, CPU, load, disk and temperature, JSON-ready.

    ``cpu_sample_s`` None reads CPU use since the previous call without blocking (what the
    heartbeat wants); a number samples for that long (what a one-shot ``status`` wants).
    """
    import psutil  # imported on first use: start-up does not need it

    memory = psutil.virtual_memory()
    device: dict[str, Any] = {
        "memory_total_mb": memory.total // 2**20,
        "memory_available_mb": memory.available // 2**20,
        "memory_percent": memory.percent,
        "cpu_percent": psutil.cpu_percent(interval=cpu_sample_s),
        "load_average": list(os.getloadavg()),
    }
    probe = data_dir if data_dir.exists() else Path("/")
    disk = psutil.disk_usage(str(probe))
    device["disk_free_mb"] = disk.free // 2**20
    device["disk_percent"] = disk.percent
    sensors = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    temperatures: dict[str, list[Any]] = sensors() if sensors else {}
    readings = [t.current for entries in temperatures.values() for t in entries if t.current]
    device["temperature_c"] = max(readings) if readings else None
    return device
