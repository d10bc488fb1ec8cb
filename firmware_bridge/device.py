"""One MCU on the bridge: a supervised task that keeps its link up and reads its telemetry.

The task owns the device's link. It opens the port (a missing port is retried with backoff
up to :data:`RECONNECT_MAX_S`, so an absent MCU costs one open attempt every few seconds),
probes the MCU, and every telemetry period reads its stat groups and hands them to
``publish``. A lost link (a USB device that re-enumerates after a reset) ends the
connection and the loop reopens it. Nothing but cancellation ends the task: a device that
misbehaves is logged and retried, never allowed to take the host down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agent.config import FirmwareDevice
from agent.errors import DeviceError, DeviceUnavailable, FirmwareError
from firmware_bridge import codec
from firmware_bridge.link import Link, make_link
from firmware_bridge.session import SMPSession

__all__ = ["Device", "DeviceState"]

logger = logging.getLogger("lattice_edge.firmware.device")

RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 5.0
PROBE_INTERVAL_S = 2.0
DEFAULT_BUF_SIZE = 256  # when the device does not report MCUmgr parameters
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
T = TypeVar("T")


class DeviceState(enum.Enum):
    """How the bridge sees an MCU."""

    OFFLINE = "offline"  # its port cannot be opened (absent, busy)
    CONNECTING = "connecting"  # the port is open, the MCU has not answered yet
    ONLINE = "online"
    UNRESPONSIVE = "unresponsive"  # the port is open, the MCU stopped answering


Publish = Callable[["Device", codec.StatGroup], Awaitable[None]]


class Device:
    """An MCU, its link and session, and its supervision loop (:meth:`run`)."""

    def __init__(
        self, settings: FirmwareDevice, *, telemetry_period_s: float, publish: Publish
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.link: Link = make_link(
            settings.name, settings.transport, port=settings.port, baud=settings.baud,
            address=settings.address,
        )  # fmt: skip
        self.session = SMPSession(self.link, timeout_s=settings.timeout_s)
        self.telemetry_period_s = telemetry_period_s
        self.state = DeviceState.OFFLINE
        self.reason = "not started"
        self.params: codec.Params | None = None
        self.updating = False
        self.last_update: dict[str, Any] | None = None
        self._publish = publish
        self._online = asyncio.Event()
        self._stat_groups: tuple[str, ...] | None = None

    # --- requests from the service and the updater -----------------------------------------

    async def call(self, work: Callable[[SMPSession], Awaitable[T]]) -> T:
        """Run one exchange with the MCU, keeping the device state current."""
        if not self.link.is_open:
            raise DeviceUnavailable(f"device {self.name} is {self.state.value}: {self.reason}")
        try:
            result = await work(self.session)
        except DeviceUnavailable as exc:
            if self.link.is_open:
                self._set(DeviceState.UNRESPONSIVE, str(exc))
            raise
        self._set(DeviceState.ONLINE, "answering")
        return result

    async def wait_online(self, timeout: float) -> bool:
        """Wait until the MCU answers an echo, up to ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            if self.link.is_open:
                try:
                    await self.call(lambda s: s.echo("lattice-edge"))
                    return True
                except DeviceUnavailable:
                    pass
            await asyncio.sleep(min(0.1, max(left, 0)))
        return False

    def chunk_size(self, size: int, sha: bytes) -> int:
        """Image bytes per upload request: what the device's buffer holds after overhead."""
        buf = self.params.buf_size if self.params is not None else DEFAULT_BUF_SIZE
        return max(16, min(buf, 4096) - codec.upload_overhead(size, sha))

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        where = s.port if s.transport == "serial" else str(s.address)
        return {
            "device": self.name, "transport": s.transport, "where": where,
            "state": self.state.value, "reason": self.reason, "updating": self.updating,
        }  # fmt: skip

    # --- the supervision loop --------------------------------------------------------------

    async def run(self) -> None:
        """Keep the link up and the telemetry flowing until cancelled."""
        backoff = RECONNECT_MIN_S
        try:
            while True:
                try:
                    await self.link.open()
                except DeviceUnavailable as exc:
                    self._set(DeviceState.OFFLINE, str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                    continue
                backoff = RECONNECT_MIN_S
                self._set(DeviceState.CONNECTING, "port open")
                try:
                    await self._connected()
                except DeviceUnavailable as exc:
                    self._set(DeviceState.OFFLINE, str(exc))
                except FirmwareError as exc:
                    logger.warning("firmware device %s: %s", self.name, exc)
                    await asyncio.sleep(RECONNECT_MAX_S)
                except Exception:  # the one error policy: log, back off, keep supervising
                    logger.exception("firmware device %s: unexpected error", self.name)
                    await asyncio.sleep(RECONNECT_MAX_S)
                finally:
                    self._online.clear()
                    await self.link.close()
        finally:
            await self.link.close()

    async def _connected(self) -> None:
        loop = asyncio.get_running_loop()
        self._stat_groups = None
        next_probe = next_telemetry = loop.time()
        while True:
            now = loop.time()
            if self.state is not DeviceState.ONLINE and now >= next_probe and not self.updating:
                await self._probe()
                next_probe = now + min(PROBE_INTERVAL_S, self.telemetry_period_s)
            if self.state is DeviceState.ONLINE and now >= next_telemetry and not self.updating:
                await self._telemetry()
                next_telemetry = now + self.telemetry_period_s
            online = self.state is DeviceState.ONLINE
            wake = (next_telemetry if online else next_probe) - loop.time()
            try:
                await asyncio.wait_for(self.link.wait_lost(), max(wake, 0.05))
            except TimeoutError:
                continue
            raise DeviceUnavailable(f"{self.link.description}: the connection was lost")

    async def _probe(self) -> None:
        try:
            self.params = await self.call(lambda s: s.params())
        except DeviceUnavailable:
            if not self.link.is_open:
                raise
            return
        logger.info("firmware device %s is online (%s)", self.name, self.link.description)

    async def _telemetry(self) -> None:
        try:
            groups = await self._groups()
            for group in groups:
                stats = await self.call(lambda s, g=group: s.stat_group(g))  # type: ignore[misc]
                await self._publish(self, stats)
        except DeviceUnavailable:
            if not self.link.is_open:
                raise
        except DeviceError as exc:
            logger.debug("firmware device %s: stats: %s", self.name, exc)

    async def _groups(self) -> tuple[str, ...]:
        if self.settings.stat_groups is not None:
            return self.settings.stat_groups
        if self._stat_groups is None:
            listed = await self.call(lambda s: s.stat_groups())
            usable = tuple(g for g in listed if _SUBJECT_TOKEN.match(g))
            if len(usable) != len(listed):
                logger.warning(
                    "firmware device %s: ignoring stat groups whose names cannot be subject "
                    "tokens: %r", self.name, [g for g in listed if g not in usable],
                )  # fmt: skip
            self._stat_groups = usable
        return self._stat_groups

    def _set(self, state: DeviceState, reason: str) -> None:
        if state is DeviceState.ONLINE:
            self._online.set()
        if state is not self.state:
            if state in (DeviceState.OFFLINE, DeviceState.UNRESPONSIVE):
                logger.warning("firmware device %s is %s: %s", self.name, state.value, reason)
            self.state = state
        self.reason = reason
