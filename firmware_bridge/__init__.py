"""The firmware bridge: microcontrollers on the lattice over mcumgr's SMP, with signed OTA.

Microcontrollers running Zephyr or another MCUboot-based firmware already speak mcumgr's
Simple Management Protocol (SMP) over a serial console or UDP, so nothing of ours runs on
them. The layers, from the wire up:

* :mod:`firmware_bridge.framing` and :mod:`firmware_bridge.codec` — pure: the serial line
  framing (base64, CRC16-XMODEM, ``06 09`` / ``04 14``), the SMP header, CBOR bodies and
  the response schemas the bridge reads. No I/O.
* :mod:`firmware_bridge.link` — async serial (pyserial-asyncio-fast) and UDP links.
* :mod:`firmware_bridge.session` — one request at a time per device, matched by sequence
  number, retransmitted on timeout.
* :mod:`firmware_bridge.device` — one supervised task per MCU: reconnects, telemetry.
* :mod:`firmware_bridge.image` and :mod:`firmware_bridge.ota` — MCUboot image checks
  (imgtool) and the fail-safe update procedure.
* :mod:`firmware_bridge.service` and :mod:`firmware_bridge.bridge` — the ``nats.micro``
  endpoints on the lattice and the composition the agent starts.
* :mod:`firmware_bridge.simulator` — an SMP server with MCUboot's slot semantics, for tests
  and for trying the bridge without hardware.

Nothing here is imported by the agent unless ``[[firmware.devices]]`` is configured.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from firmware_bridge.bridge import FirmwareBridge

__all__ = ["require", "start_bridge"]

_NEEDS = {
    "bridge": ("serial", "serial_asyncio_fast", "cbor2", "imgtool"),
    "simulator": ("smp", "cbor2"),
}


def require(part: str = "bridge") -> None:
    """Raise a :class:`~agent.errors.ConfigError` naming the extra when a dependency is missing."""
    from agent.errors import ConfigError

    missing = [name for name in _NEEDS[part] if importlib.util.find_spec(name) is None]
    if missing:
        extra = "firmware" if part == "bridge" else part
        raise ConfigError(
            f"the firmware {part} needs the '{extra}' extra ({', '.join(missing)} missing): "
            f"pip install 'lattice-edge[{extra}]'",
            key="firmware.devices" if part == "bridge" else None,
        )


async def start_bridge(host: Any, tasks: asyncio.TaskGroup) -> FirmwareBridge:
    """Start the bridge for a running host (see :func:`firmware_bridge.bridge.start_bridge`)."""
    require("bridge")
    from firmware_bridge.bridge import start_bridge as start

    return await start(host, tasks)
