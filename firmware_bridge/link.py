"""Links to an MCU: a serial console (SMP lines among log lines) or UDP (one frame each).

A link moves whole SMP frames. :meth:`Link.open` connects (or raises
:class:`~agent.errors.DeviceUnavailable`), :meth:`Link.receive` waits a bounded time for the
next frame, and a lost connection — a USB serial device that disappears when the MCU resets
— wakes every waiter with ``DeviceUnavailable``; the device task then reopens the link.

Serial I/O uses pyserial-asyncio-fast: it opens and closes the port in a thread (opening a
USB tty can block) and reads through the event loop's ``add_reader`` with non-blocking
reads, so no serial call blocks the loop and an idle link costs no wake-ups (smpclient's
serial transport polls pyserial instead). Writes that the device does not drain are capped:
past :data:`MAX_UNSENT` bytes a send fails rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import HostPort
from agent.errors import DeviceUnavailable
from firmware_bridge.framing import DEFAULT_LINE_LENGTH, MAX_FRAME, LineDecoder, encode_packet

__all__ = ["MAX_UNSENT", "Link", "LinkStats", "SerialLink", "UdpLink"]

logger = logging.getLogger("lattice_edge.firmware.link")

MAX_UNSENT = 32 * 1024
QUEUE_FRAMES = 16  # frames waiting for a reader; older ones are dropped (stale answers)


@dataclass(slots=True)
class LinkStats:
    """Counters of one link, kept across reconnections."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    garbled: int = 0
    console_lines: int = 0
    connects: int = 0
    losses: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "frames_in": self.frames_in, "frames_out": self.frames_out,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "garbled": self.garbled,
            "console_lines": self.console_lines, "connects": self.connects,
            "losses": self.losses,
        }  # fmt: skip


class Link(Protocol):
    """What a device session needs from its connection to the MCU."""

    description: str
    stats: LinkStats

    @property
    def is_open(self) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_lost(self) -> None: ...

    def discard_pending(self) -> None: ...

    async def send(self, frame: bytes) -> None: ...

    async def receive(self, timeout: float) -> bytes | None: ...


_LOST = b""  # queued when the connection goes away: wakes a waiting receive


class _Frames:
    """A bounded queue of received frames for one connection."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_FRAMES)
        self.lost = asyncio.Event()

    def put(self, frame: bytes) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(frame)

    def mark_lost(self) -> None:
        if not self.lost.is_set():
            self.lost.set()
            self.put(_LOST)

    def discard(self) -> None:
        while not self.queue.empty():
            if self.queue.get_nowait() == _LOST:
                self.put(_LOST)
                return

    async def get(self, timeout: float, description: str) -> bytes | None:
        if self.lost.is_set() and self.queue.empty():
            raise DeviceUnavailable(f"{description}: the connection was lost")
        try:
            frame = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        if frame == _LOST:
            self.put(_LOST)
            raise DeviceUnavailable(f"{description}: the connection was lost")
        return frame


class _ConsoleLog:
    """Logs an MCU's console lines at debug level, escaped and at most ~10 a second."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._window = 0.0
        self._count = 0

    def __call__(self, line: bytes) -> None:
        now = time.monotonic()
        if now - self._window > 1.0:
            self._window, self._count = now, 0
        self._count += 1
        if self._count <= 10 and logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s console: %r", self.name, line[:200])


class _SerialProtocol(asyncio.Protocol):
    def __init__(self, link: SerialLink, frames: _Frames) -> None:
        self.link = link
        self.frames = frames
        self.decoder = LineDecoder(max_frame=MAX_FRAME, on_console=link.console)

    def data_received(self, data: bytes) -> None:
        stats = self.link.stats
        before = self.decoder.stats
        garbled, console = before.garbled, before.console_lines
        stats.bytes_in += len(data)
        for frame in self.decoder.feed(data):
            stats.frames_in += 1
            self.frames.put(frame)
        stats.garbled += self.decoder.stats.garbled - garbled
        stats.console_lines += self.decoder.stats.console_lines - console

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.link.closing:
            self.link.stats.losses += 1
            logger.info(
                "%s: the port went away (%s)",
                self.link.description,
                _reason(exc) if exc else "closed",
            )
        self.frames.mark_lost()


class SerialLink:
    """SMP over a serial console (``/dev/ttyACM0``, a USB-serial adapter, a pty)."""

    def __init__(self, name: str, port: str, baud: int, line_length: int = DEFAULT_LINE_LENGTH):
        self.name = name
        self.port = port
        self.baud = baud
        self.line_length = line_length
        self.description = f"{name} ({port})"
        self.stats = LinkStats()
        self.console = _ConsoleLog(name)
        self.closing = False
        self._transport: asyncio.Transport | None = None
        self._frames = _Frames()
        self._frames.mark_lost()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._frames.lost.is_set()

    async def open(self) -> None:
        """Open the port (in a thread); raise DeviceUnavailable when it is absent or busy."""
        import serial
        import serial_asyncio_fast

        await self.close()
        frames = _Frames()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: _SerialProtocol(self, frames), self.port, baudrate=self.baud,
                exclusive=True,
            )  # fmt: skip
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnavailable(f"{self.description}: cannot open: {_reason(exc)}") from exc
        self._transport = transport
        self._frames = frames
        self.closing = False
        self.stats.connects += 1

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            self.closing = True
            transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._frames.lost.wait(), 2.0)
        self._frames.mark_lost()

    async def wait_lost(self) -> None:
        await self._frames.lost.wait()

    def discard_pending(self) -> None:
        self._frames.discard()

    async def send(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or self._frames.lost.is_set():
            raise DeviceUnavailable(f"{self.description}: not connected")
        if transport.get_write_buffer_size() > MAX_UNSENT:
            raise DeviceUnavailable(f"{self.description}: the device is not reading its port")
        data = b"".join(encode_packet(frame, self.line_length))
        transport.write(data)
        self.stats.frames_out += 1
        self.stats.bytes_out += len(data)

    async def receive(self, timeout: float) -> bytes | None:
        return await self._frames.get(timeout, self.description)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, link: UdpLink, frames: _Frames) -> None:
        self.link = link
        self.frames = frames

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.link.stats.bytes_in += len(data)
        if len(data) > MAX_FRAME:
            self.link.stats.garbled += 1
            return
        self.link.stats.frames_in += 1
        self.frames.put(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the MCU reboots: the retransmit covers it.
        logger.debug("%s: %s", self.link.description, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.frames.mark_lost()


class UdpLink:
    """SMP over UDP (mcumgr's port 1337): one frame per datagram, no line framing."""

    def __init__(self, name: str, address: HostPort):
        self.name = name
        self.address = address
        self.description = f"{name} (udp {address})"
        self.stats = LinkStats()
        self._transport: asyncio.DatagramTransport | None = None
        self._frames = _Frames()
        self._frames.mark_lost()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._frames.lost.is_set()

    async def open(self) -> None:
        await self.close()
        frames = _Frames()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self, frames),
                remote_addr=(self.address.host, self.address.port),
            )
        except OSError as exc:
            raise DeviceUnavailable(f"{self.description}: {_reason(exc)}") from exc
        self._transport = transport
        self._frames = frames
        self.stats.connects += 1

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._frames.mark_lost()

    async def wait_lost(self) -> None:
        await self._frames.lost.wait()

    def discard_pending(self) -> None:
        self._frames.discard()

    async def send(self, frame: bytes) -> None:
        if self._transport is None:
            raise DeviceUnavailable(f"{self.description}: not connected")
        self._transport.sendto(frame)
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)

    async def receive(self, timeout: float) -> bytes | None:
        return await self._frames.get(timeout, self.description)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text else type(exc).__name__


def make_link(
    name: str, transport: str, *, port: str | None, baud: int, address: HostPort | None
) -> Link:
    """The link a ``[[firmware.devices]]`` entry describes."""
    if transport == "udp" and address is not None:
        return UdpLink(name, address)
    if port is None:
        raise DeviceUnavailable(f"{name}: a serial device needs a port")
    return SerialLink(name, port, baud)
