"""Reading nats-server's HTTP monitoring endpoints (``/healthz``, ``/varz``, ``/leafz``).

The endpoints sit on loopback and answer small JSON bodies, so a few lines of asyncio
streams replace ``urllib`` and its import cost at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from agent.config import HostPort

__all__ = ["MonitorError", "get_json"]


class MonitorError(Exception):
    """The monitoring endpoint did not answer with JSON (internal; callers convert it)."""


async def get_json(address: HostPort, path: str, *, timeout: float = 2.0) -> tuple[int, Any]:
    """GET ``path`` from the monitoring listener; return (status, decoded JSON body)."""
    try:
        return await asyncio.wait_for(_get(address, path), timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise MonitorError(f"http://{address}{path}: {exc or type(exc).__name__}") from exc


async def _get(address: HostPort, path: str) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()  # HTTP/1.0: the server closes after the body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("not an HTTP response")
    return int(status_line[1]), json.loads(body) if body.strip() else None
