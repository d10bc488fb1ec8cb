"""Helpers for store-and-forward tests and benchmarks: a cuttable uplink, a hub that
advertises it, device configs, a producer that retries until the outbox acks, and a reader
of what reached the hub stream. Every connection to a device's local port goes through
:func:`connect_device`, so adapting to new local-auth rules is one place."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from lattice_testing import Hub, free_port

from agent.forward.uplink import UPLINK_STREAM, UplinkStreamSpec, ensure_uplink_stream
from agent.identity.host import ensure_host_keys


class CuttableLink:
    """A TCP proxy on loopback between the device's leaf and the hub's leafnode port.

    :meth:`cut` closes the listener and aborts every connection through it (the link is
    gone, both servers keep running); :meth:`restore` listens again. It counts the bytes
    it carries in each direction, for the idle-traffic benchmark.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        self.up_bytes = 0  # device → hub
        self.down_bytes = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink, upward in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.ensure_future(self._pipe(source, sink, upward))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upward: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if upward:
                    self.up_bytes += len(data)
                else:
                    self.down_bytes += len(data)
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


class ProxiedHub(Hub):
    """A :class:`Hub` whose leafnode INFO advertises the proxy, so a reconnecting leaf
    cannot learn the real port and bypass the cut link."""

    def __init__(self, directory: Path, binary: Path, proxy_port: int) -> None:
        self.proxy_port = proxy_port
        super().__init__(directory, binary)

    def _config(self) -> str:
        real = f'advertise: "127.0.0.1:{self.leaf_port}"'
        return super()._config().replace(real, f'advertise: "127.0.0.1:{self.proxy_port}"')

    @property
    def proxied_leaf_url(self) -> str:
        return f"nats-leaf://127.0.0.1:{self.proxy_port}"


def device_config(
    root: Path,
    *,
    upstream_url: str,
    creds: Path,
    extra: str = "",
    forward: str = "subjects = ['sensors.>']",
    budgets: str = "",
    leaf: str = "",
    heartbeat_s: float = 0.5,
) -> Path:
    """Write a device config under ``root``; return its path (data in ``root/data``)."""
    path = root / "agent.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[host]\ndata_dir = '{root / 'data'}'\nprofile = 'generic-x86_64'\nname = 'edge-fwd'\n"
        f"[leaf]\nlisten = '127.0.0.1:{free_port()}'\nmonitor = '127.0.0.1:{free_port()}'\n"
        f"{leaf}\n"
        f"[upstream]\nurls = ['{upstream_url}']\ncredentials = '{creds}'\n"
        f"[forward]\n{forward}\n"
        f"[budgets]\nheartbeat_interval_s = {heartbeat_s}\n{budgets}\n{extra}"
    )
    ensure_host_keys(root / "data" / "keys")  # what `lattice-edge init` does
    return path


async def connect_device(url: str, **options: Any) -> Any:
    """An anonymous local client of a device (application subjects only)."""
    return await nats.connect(url, **options)


async def connect_hub(hub: Hub) -> Any:
    """A cloud-side client of the hub."""
    return await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))


async def create_uplink(hub: Hub, **spec: Any) -> None:
    """The hub stream, as ``lattice-edge fleet uplink init`` makes it."""
    cloud = await connect_hub(hub)
    try:
        await ensure_uplink_stream(cloud, UplinkStreamSpec(**spec))
    finally:
        await cloud.close()


def payload(index: int, size: int = 200) -> bytes:
    """Message ``index``: its number first, padded to ``size`` bytes."""
    head = f"{index:08d}:".encode()
    return head + b"x" * max(0, size - len(head))


def index_of(data: bytes) -> int:
    return int(data[:8])


class Producer:
    """Publishes ``count`` messages to a device with JetStream publishes, each retried
    (same ``Nats-Msg-Id``) until the outbox acks it, so none is lost while the agent or
    its leaf is down. ``pause`` slows it to spread the run over the chaos."""

    def __init__(self, url: str, subject: str = "sensors.chaos", size: int = 200) -> None:
        self.url = url
        self.subject = subject
        self.size = size
        self.acked = 0
        self.retries = 0

    async def run(self, count: int, *, pause: float = 0.0) -> None:
        client = await connect_device(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=1,
            error_cb=_quiet, allow_reconnect=True,
        )  # fmt: skip
        js = client.jetstream(timeout=1.0)
        try:
            for index in range(count):
                while True:
                    try:
                        await js.publish(
                            self.subject, payload(index, self.size),
                            headers={"Nats-Msg-Id": f"m-{index}"},
                        )  # fmt: skip
                        break
                    except (nats.errors.Error, TimeoutError, OSError):
                        self.retries += 1
                        await asyncio.sleep(0.05)
                self.acked += 1
                if pause:
                    await asyncio.sleep(pause)
        finally:
            with contextlib.suppress(Exception):
                await client.close()


async def _quiet(_exc: Exception) -> None:
    return None


@dataclass
class HubMessage:
    subject: str
    data: bytes
    headers: dict[str, str]


async def hub_count(hub: Hub, stream: str = UPLINK_STREAM) -> int:
    cloud = await connect_hub(hub)
    try:
        info = await cloud.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await cloud.close()


async def wait_hub_count(hub: Hub, count: int, timeout: float) -> float:
    """Seconds until the hub stream holds ``count`` messages; fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    cloud = await connect_hub(hub)
    try:
        js = cloud.jetstream()
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                if (await js.stream_info(UPLINK_STREAM)).state.messages >= count:
                    return loop.time() - started
            if loop.time() - started > timeout:
                have = await hub_count(hub)
                raise AssertionError(f"the hub has {have} of {count} after {timeout} s")
            await asyncio.sleep(0.05)
    finally:
        await cloud.close()


async def hub_messages(hub: Hub, stream: str = UPLINK_STREAM) -> list[HubMessage]:
    """Every message in the hub stream, in stream order."""
    cloud = await connect_hub(hub)
    try:
        js = cloud.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe("", stream=stream)
        found: list[HubMessage] = []
        while len(found) < total:
            for msg in await sub.fetch(min(1000, total - len(found)), timeout=5):
                found.append(HubMessage(msg.subject, bytes(msg.data), dict(msg.headers or {})))
                await msg.ack()
        return found
    finally:
        await cloud.close()


def check_exactly_once_in_order(
    messages: list[HubMessage], count: int, host_id: str, first: int = 0
) -> None:
    """The hub holds message ``first`` … ``first + count - 1``, each once, in order, with
    the hub's ``Nats-Msg-Id`` increasing."""
    indices = [index_of(m.data) for m in messages]
    duplicates = len(indices) - len(set(indices))
    assert duplicates == 0, f"{duplicates} duplicates at the hub"
    assert indices == list(range(first, first + count)), _first_difference(indices, first)
    sequences = [int(m.headers["Nats-Msg-Id"].split(":")[1]) for m in messages]
    assert all(m.headers["Nats-Msg-Id"].startswith(f"{host_id}:") for m in messages)
    assert sequences == sorted(sequences)


def _first_difference(indices: list[int], first: int) -> str:
    for position, index in enumerate(indices):
        if index != first + position:
            return f"at position {position}: {index} (expected {first + position})"
    return f"{len(indices)} messages"


async def health_of(client: Any, host_id: str) -> dict[str, Any]:
    """The agent's health report, asked as the agent user."""
    reply = await client.request(f"lattice-edge.host.{host_id}.health", b"", timeout=5)
    result: dict[str, Any] = json.loads(reply.data)
    return result


async def eventually(
    check: Callable[[], Any], timeout: float, what: str, show: Callable[[], Any] | None = None
) -> Any:
    """Await ``check()`` (a coroutine function) until it returns something truthy; on
    timeout the error includes ``show()``, what was seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            seen = f"; saw {show()!r}" if show is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        await asyncio.sleep(0.1)
