"""The simulated MCU on a pseudo-terminal or a UDP port, with fault switches.

On a pty the simulator behaves like a Zephyr console UART: SMP lines (framed with the
``smp`` package's encoder, independently of the bridge's) among log lines, an optional
emulated line rate (``baud``: a pty itself has none), and on ``reenumerate`` the port
disappears on every reset and comes back as a new pty behind the same symlink, as a USB
CDC-ACM device does. Faults: drop requests, garble answer lines, console noise (also
between the lines of one answer), reboot at a fraction of an upload (the upload state is
lost), disconnect at a fraction of an upload (the port vanishes for ``vanish_s``; the MCU
keeps its upload state, as with a USB cable glitch).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from firmware_bridge.simulator.mcu import Effect, SimulatedMCU

__all__ = ["Faults", "PtyServer", "UdpServer"]

logger = logging.getLogger("lattice_edge.firmware.simulator")


@dataclass(slots=True)
class Faults:
    """Fault switches; may be changed while the simulator runs."""

    drop: float = 0.0  # probability that a request is ignored
    garble: float = 0.0  # probability that an answer line (or datagram) is corrupted
    noise: float = 0.0  # probability of a console line before each answer line
    reboot_at: float | None = None  # upload fraction at which the MCU reboots (once)
    disconnect_at: float | None = None  # upload fraction at which the port vanishes (once)
    vanish_s: float = 1.0
    reenumerate: bool = False  # the port vanishes on every reset
    boot_s: float = 0.2
    silent: bool = False  # a hung MCU: reads, never answers
    brick_on_reset: bool = False  # after its next reset the MCU never answers again


class _Base:
    def __init__(self, mcu: SimulatedMCU, faults: Faults, seed: int | None = None) -> None:
        self.mcu = mcu
        self.faults = faults
        self.random = random.Random(seed)
        self.booting = False
        self.answers = 0

    def _upload_faults(self) -> str | None:
        fraction = self.mcu.upload_fraction
        faults = self.faults
        if faults.reboot_at is not None and fraction >= faults.reboot_at:
            faults.reboot_at = None
            return "reboot"
        if faults.disconnect_at is not None and fraction >= faults.disconnect_at:
            faults.disconnect_at = None
            return "disconnect"
        return None

    def _answer(self, frame: bytes) -> tuple[bytes | None, Effect]:
        if self.booting or self.faults.silent:
            return None, Effect.NONE
        if self.faults.drop and self.random.random() < self.faults.drop:
            return None, Effect.NONE
        answer, effect = self.mcu.handle(frame)
        if answer is not None:
            self.answers += 1
        return answer, effect

    def _console_line(self) -> bytes:
        uptime = self.mcu.stats()["sim"]["ticks"] / 100
        return f"[{uptime:012.6f}] <inf> sim: tick, temperature ok\r\n".encode()


class PtyServer(_Base):
    """Serves the simulated MCU on a pty reachable through the symlink ``link``."""

    def __init__(
        self,
        mcu: SimulatedMCU,
        faults: Faults,
        link: Path,
        *,
        baud: int = 0,
        seed: int | None = None,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(mcu, faults, seed)
        self.link = link
        self.baud = baud
        self.on_ready = on_ready
        self._master: int | None = None
        self._slave: int | None = None
        self._readable = asyncio.Event()
        self._write_lock = asyncio.Lock()

    # --- the pty --------------------------------------------------------------------------

    def _appear(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # before anyone opens it: no echo, no line discipline
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        temporary = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(os.ttyname(slave))
        temporary.replace(self.link)
        asyncio.get_running_loop().add_reader(master, self._readable.set)
        if self.on_ready is not None:
            self.on_ready(os.ttyname(slave))

    def _vanish(self) -> None:
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    async def run(self) -> None:
        """Serve until cancelled."""
        self._appear()
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._serve()
        finally:
            watchdog.cancel()
            self._vanish()

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.mcu.watchdog_due() and not self.booting:
                logger.info("watchdog reset of an unconfirmed image")
                await self._reboot(vanish=self.faults.reenumerate)
            elif self.faults.noise and self.random.random() < self.faults.noise / 5:
                await self._write([self._console_line()])

    async def _serve(self) -> None:
        from smp import packet

        buffer = b""
        decoder = None
        while True:
            await self._readable.wait()
            self._readable.clear()
            master = self._master
            if master is None:
                continue
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody has the slave open: wait for someone
                    await asyncio.sleep(0.05)
                    self._readable.set()
                    continue
                raise
            await self._pace(len(data))
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line += b"\n"
                if line.startswith(packet.START_DELIMITER):
                    decoder = packet.decode()
                    next(decoder)
                elif decoder is None:
                    continue
                try:
                    decoder.send(line)
                    continue
                except StopIteration as done:
                    frame = bytes(done.value)
                except Exception:  # smp raises several types on a malformed line: resync
                    decoder = None
                    continue
                decoder = None
                try:
                    await self._respond(frame)
                except Exception:  # a simulator bug must not take the "device" down
                    logger.exception("the simulator failed to answer a request")

    async def _respond(self, frame: bytes) -> None:
        from smp import packet

        answer, effect = self._answer(frame)
        if answer is not None:
            lines = []
            for line in packet.encode(answer, line_length=128):
                if self.faults.noise and self.random.random() < self.faults.noise:
                    lines.append(self._console_line())
                if self.faults.garble and self.random.random() < self.faults.garble:
                    spot = self.random.randrange(2, len(line) - 1)
                    line = line[:spot] + bytes([line[spot] ^ 0x15]) + line[spot + 1 :]
                lines.append(line)
            await self._write(lines)
        if effect is Effect.RESET:
            await self._reboot(vanish=self.faults.reenumerate)
            return
        match self._upload_faults():
            case "reboot":
                await self._reboot(vanish=self.faults.reenumerate)
            case "disconnect":
                self._vanish()
                await asyncio.sleep(self.faults.vanish_s)
                self._appear()

    async def _reboot(self, *, vanish: bool) -> None:
        self.booting = True
        if vanish:
            self._vanish()
        await asyncio.sleep(self.faults.boot_s)
        self.mcu.boot()
        self.faults.silent = self.faults.silent or self.faults.brick_on_reset
        if vanish:
            self._appear()
        self.booting = False
        await self._write([b"*** Booting Zephyr OS (lattice-edge simulator) ***\r\n"])

    async def _write(self, lines: list[bytes]) -> None:
        async with self._write_lock:
            for line in lines:
                view = memoryview(line)
                while view:
                    master = self._master
                    if master is None:
                        return
                    try:
                        written = os.write(master, view)
                    except BlockingIOError:
                        await asyncio.sleep(0.005)
                        continue
                    except OSError:
                        return
                    view = view[written:]
                    await self._pace(written)

    async def _pace(self, size: int) -> None:
        if self.baud:  # 8N1: ten bit times per byte
            await asyncio.sleep(size * 10 / self.baud)


class UdpServer(_Base, asyncio.DatagramProtocol):
    """Serves the simulated MCU on a UDP port: one SMP frame per datagram."""

    def __init__(self, mcu: SimulatedMCU, faults: Faults, *, seed: int | None = None) -> None:
        super().__init__(mcu, faults, seed)
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer, effect = self._answer(data)
        if answer is not None and self.transport is not None:
            if self.faults.garble and self.random.random() < self.faults.garble:
                answer = answer[:-1]
            self.transport.sendto(answer, addr)
        if effect is Effect.RESET or self._upload_faults() == "reboot":
            self._spawn(self._reboot())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reboot(self) -> None:
        self.booting = True
        await asyncio.sleep(self.faults.boot_s)
        self.mcu.boot()
        self.faults.silent = self.faults.silent or self.faults.brick_on_reset
        self.booting = False

    async def serve(
        self, host: str, port: int, on_ready: Callable[[str], None] | None = None
    ) -> None:
        """Bind and serve until cancelled."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        if on_ready is not None:
            sockname = transport.get_extra_info("sockname")
            on_ready(f"{sockname[0]}:{sockname[1]}")
        try:
            while True:
                await asyncio.sleep(0.1)
                if self.mcu.watchdog_due() and not self.booting:
                    await self._reboot()
        finally:
            transport.close()
            for task in list(self._tasks):
                task.cancel()
