"""Test helpers for the firmware bridge with real parts: imgtool-signed MCUboot images, the
MCU simulator on a real pty or UDP port in its own thread, and an in-process bridge on a real
nats-server. Imported by the firmware tests and by ``tests/bench/firmware.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import FirmwareDevice, FirmwareSettings, HostPort
from agent.lattice.refs import ModuleCache
from firmware_bridge.bridge import FirmwareBridge
from firmware_bridge.simulator import Faults, PtyServer, SimulatedMCU, UdpServer

IMGTOOL = str(Path(sys.executable).parent / "imgtool")
HOST_ID = "NFIRMWARETESTHOST0000000000000000000000000000000000000"
LATTICE = "fwtest"


def imgtool(*args: str) -> str:
    result = subprocess.run([IMGTOOL, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"imgtool {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class SigningKey:
    private: Path
    public: Path


def make_key(directory: Path, name: str, kind: str) -> SigningKey:
    """An imgtool key pair (``ed25519``, ``ecdsa-p256``) and its public PEM (``getpub``)."""
    private = directory / f"{name}.pem"
    imgtool("keygen", "-k", str(private), "-t", kind)
    public = directory / f"{name}.pub.pem"
    public.write_text(imgtool("getpub", "-k", str(private), "--encoding", "pem"))
    return SigningKey(private, public)


def sign_image(
    directory: Path, key: SigningKey | None, version: str, *, size: int = 24_000, seed: int = 1
) -> Path:
    """A random payload made into an MCUboot image by ``imgtool sign`` (unsigned: no key)."""
    payload = directory / f"app-{version}-{seed}.bin"
    payload.write_bytes(bytes((i * 7 + seed * 13) % 251 for i in range(size)))
    name = key.private.stem if key else "unsigned"
    out = directory / f"app-{version}-{seed}-{name}.signed.bin"
    args = ["sign", "--header-size", "0x200", "--align", "4", "--version", version,
            "--slot-size", "0x80000", "--pad-header"]  # fmt: skip
    if key is not None:
        args += ["--key", str(key.private)]
    imgtool(*args, str(payload), str(out))
    return out


class SimulatorThread:
    """The simulator on a pty (``link``) or UDP, served by its own event loop in a thread, like
    a separate device; ``mcu`` and ``faults`` may be read and changed from the test."""

    def __init__(
        self,
        mcu: SimulatedMCU,
        faults: Faults,
        *,
        link: Path | None = None,
        udp: bool = False,
        baud: int = 0,
        seed: int = 7,
    ) -> None:
        self.mcu = mcu
        self.faults = faults
        self.link = link
        self.udp = udp
        self.baud = baud
        self.seed = seed
        self.address: HostPort | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.udp:
            server = UdpServer(self.mcu, self.faults, seed=self.seed)

            def bound(where: str) -> None:
                self.address = HostPort.parse(where)
                self._ready.set()

            work = server.serve("127.0.0.1", 0, on_ready=bound)
        else:
            assert self.link is not None
            pty = PtyServer(self.mcu, self.faults, self.link, baud=self.baud, seed=self.seed,
                            on_ready=lambda _path: self._ready.set())  # fmt: skip
            work = pty.run()
        self._task = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    def __enter__(self) -> SimulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the simulator did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)

    def device(self, name: str = "mcu0", **settings: Any) -> FirmwareDevice:
        """A ``[[firmware.devices]]`` entry that points at this simulator."""
        base: dict[str, Any] = {"timeout_s": 0.4, "stat_groups": None, "baud": 115200}
        base.update(settings)
        if self.udp:
            return FirmwareDevice(name, "udp", None, base["baud"], self.address,
                                  base["stat_groups"], base["timeout_s"])  # fmt: skip
        return FirmwareDevice(name, "serial", str(self.link), base["baud"], None,
                              base["stat_groups"], base["timeout_s"])  # fmt: skip


@dataclass
class Harness:
    """An in-process bridge on a real nats-server, and what it published."""

    bridge: FirmwareBridge
    nats: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def call(self, device: str, op: str, body: dict[str, Any] | None = None,
                   timeout: float = 10.0) -> tuple[dict[str, Any], dict[str, str]]:  # fmt: skip
        """A request to an endpoint: (JSON answer, headers)."""
        subject = f"lattice-edge.firmware.{HOST_ID}.{device}.{op}"
        reply = await self.nats.request(subject, json.dumps(body or {}).encode(), timeout=timeout)
        return json.loads(reply.data), dict(reply.headers or {})

    async def wait_event(self, kind: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        """The first CloudEvent of type ``firmware_update_<kind>`` whose data matches."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for event in self.events:
                data = event["data"]
                if event["type"].endswith(kind) and all(data.get(k) == v for k, v in match.items()):
                    return event
            await asyncio.sleep(0.05)
        seen = [(e["type"], e["data"]) for e in self.events]
        raise AssertionError(f"no {kind} event matching {match} within {timeout} s; saw {seen}")

    async def finished(self, update_id: str, timeout: float = 90.0) -> dict[str, Any]:
        """The succeeded or failed event of an update."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for event in self.events:
                if event["data"].get("update_id") == update_id and event["type"].endswith(
                    ("succeeded", "failed")
                ):
                    return event
            await asyncio.sleep(0.05)
        raise AssertionError(f"update {update_id} did not finish within {timeout} s")


@contextlib.asynccontextmanager
async def running_bridge(
    nats_url: str,
    devices: list[FirmwareDevice],
    data_dir: Path,
    *,
    trusted_keys: tuple[Path, ...] = (),
    telemetry_period_s: float = 0.5,
    health_window_s: float = 1.0,
    return_timeout_s: float = 10.0,
) -> AsyncIterator[Harness]:
    """A bridge in this process, on a NATS connection of its own, with the events it emits."""
    import nats

    client = await nats.connect(nats_url)
    settings = FirmwareSettings(trusted_keys, telemetry_period_s, health_window_s,
                                return_timeout_s, tuple(devices))  # fmt: skip
    try:
        async with asyncio.TaskGroup() as tasks:
            bridge = FirmwareBridge(
                settings, nats_client=client, host_id=HOST_ID, lattice=LATTICE,
                module_cache=ModuleCache(data_dir / "modules"), telemetry_period_s=30.0,
                tasks=tasks,
            )  # fmt: skip
            harness = Harness(bridge, client)

            async def on_event(message: Any) -> None:
                harness.events.append(json.loads(message.data))

            async def on_telemetry(message: Any) -> None:
                harness.telemetry.append((message.subject, json.loads(message.data)))

            await client.subscribe(f"wasmbus.evt.{LATTICE}", cb=on_event)
            await client.subscribe("lattice-edge.telemetry.>", cb=on_telemetry)
            await bridge.start()
            try:
                yield harness
            finally:
                await bridge.stop()
    finally:
        await client.close()


async def put_image(nats_client: Any, path: Path, bucket: str = "firmware") -> str:
    """Put an image into the object store; its ``nats-os://`` reference."""
    js = nats_client.jetstream()
    try:
        store = await js.object_store(bucket)
    except Exception:
        store = await js.create_object_store(bucket)
    await store.put(path.name, path.read_bytes())
    return f"nats-os://{bucket}/{path.name}"


@contextlib.contextmanager
def pty_link(directory: Path, name: str = "ttyMCU0") -> Iterator[Path]:
    """A path for the simulator's symlink, removed afterwards."""
    link = directory / name
    try:
        yield link
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
