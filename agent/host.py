"""The composition root: what starts, in which order, and how it stops.

Start-up: config → identity → board profile → leaf config → leaf node ready → NATS
connection → state file → ``READY=1``. Shutdown reverses it, each step bounded: stop
taking requests, drain NATS, lame-duck and stop the leaf, remove the state file.
SIGTERM and SIGINT request shutdown; a second SIGINT forces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.boards import Board, resolve_board
from agent.capabilities.base import Capabilities
from agent.config import Config
from agent.errors import LatticeEdgeError, LeafConfigError
from agent.fsutil import write_atomic
from agent.identity.host import HostKeys, ensure_host_keys, load_host_keys
from agent.identity.jwt import read_creds
from agent.identity.tls import check_pem_certificate
from agent.lattice.actors import ActorRegistry
from agent.lattice.control import ControlServer, HostFacts, host_labels
from agent.lattice.hostcalls import HostCallRouter, LinkTable
from agent.lattice.refs import ModuleCache
from agent.lattice.rpc import LatticeRpcClient, RpcServer
from agent.leaf.binary import NatsServer, find_nats_server
from agent.leaf.render import LeafPlan, render
from agent.leaf.supervisor import LeafSupervisor
from agent.resources import device_resources
from agent.runtime.sandbox import Sandbox
from agent.state import DesiredState, StateStore
from agent.systemd import Notifier

__all__ = ["STATE_FILE", "Host", "HostInfo", "HostState", "prepare_host"]

logger = logging.getLogger("lattice_edge.host")

STATE_FILE = "agent.json"
LEAF_CONF = "nats-server.conf"
LEAF_PID = "nats-server.pid"
DRAIN_TIMEOUT_S = 5.0


class HostState(enum.Enum):
    """Lifecycle of the host."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What a user needs to reach a running host; also the state file's contents."""

    host_id: str
    name: str
    lattice: str
    profile: str
    client_url: str
    monitor_url: str
    jetstream_domain: str
    upstream: tuple[str, ...]
    data_dir: str
    config: str | None
    nats_server: str
    nats_server_version: str
    pid: int
    started_at: float
    version: str = __version__


def prepare_host(config: Config, *, create_keys: bool = False, demo: bool = False) -> Host:
    """Check everything that can be checked before starting anything.

    Loads (or, for the embedded default, creates) the host keys, resolves the board,
    reads the upstream credentials and finds nats-server, so each of those problems is
    reported as one clear error before a process is spawned. ``demo`` starts the demo
    actor when the host has no actors of its own (the embedded default does that).
    """
    if create_keys:
        keys, created = ensure_host_keys(config.keys_dir)
        if created:
            logger.info("created host keys in %s", config.keys_dir)
    else:
        keys = load_host_keys(config.keys_dir)
    board = resolve_board(config)
    upstream = config.upstream
    if upstream is not None:
        if upstream.credentials is not None:
            read_creds(upstream.credentials)  # raises CredsError naming the file
        for path in (upstream.tls_ca_file, upstream.tls_cert_file, upstream.tls_key_file):
            if path is not None and not path.is_file():
                raise LeafConfigError(f"upstream TLS file {path} does not exist")
        for path in (upstream.tls_ca_file, upstream.tls_cert_file):
            if path is not None:
                check_pem_certificate(path)
    server = find_nats_server(config.leaf.nats_server)
    return Host(config, keys=keys, board=board, server=server, demo=demo)


class Host:
    """One running Lattice Edge host: its leaf node and its connection to it."""

    def __init__(
        self,
        config: Config,
        *,
        keys: HostKeys,
        board: Board,
        server: NatsServer,
        demo: bool = False,
    ) -> None:
        self.config = config
        self.demo = demo
        self.demo_greeting: str | None = None
        self.keys = keys
        self.board = board
        self.server = server
        self.state = HostState.CREATED
        self.notifier = Notifier()
        self.server_name = f"{config.host.name}-{keys.host_id[:8].lower()}"
        self.jetstream_domain = config.leaf.jetstream_domain or f"edge_{keys.host_id[1:11].lower()}"
        run_dir = config.run_dir
        self.leaf = LeafSupervisor(
            server,
            run_dir / LEAF_CONF,
            monitor=config.leaf.monitor,
            server_name=self.server_name,
            ready_timeout=config.leaf.ready_timeout_s,
            pid_file=run_dir / LEAF_PID,
            env={**os.environ, "GOMEMLIMIT": f"{board.budgets.gomemlimit_mb}MiB"},
        )
        self.nats: Any = None  # nats.aio.client.Client once connected
        self.registry: ActorRegistry | None = None
        self.control: ControlServer | None = None
        self.rpc: RpcServer | None = None
        self.links = LinkTable()
        self.state_store = StateStore(config.host.data_dir / "state.json")
        self._stop = asyncio.Event()
        self._force = False

    # --- information ------------------------------------------------------------------

    @property
    def client_url(self) -> str:
        """The local lattice's NATS URL."""
        return f"nats://{self.config.leaf.listen}"

    def info(self) -> HostInfo:
        """A snapshot of how to reach this host."""
        upstream = self.config.upstream
        return HostInfo(
            host_id=self.keys.host_id,
            name=self.config.host.name,
            lattice=self.config.host.lattice,
            profile=self.board.profile.name,
            client_url=self.client_url,
            monitor_url=f"http://{self.config.leaf.monitor}",
            jetstream_domain=self.jetstream_domain,
            upstream=upstream.urls if upstream else (),
            data_dir=str(self.config.host.data_dir),
            config=str(self.config.source) if self.config.source else None,
            nats_server=str(self.server.path),
            nats_server_version=self.server.version_text,
            pid=os.getpid(),
            started_at=time.time(),
        )

    # --- lifecycle --------------------------------------------------------------------

    def write_leaf_config(self) -> tuple[str, ...]:
        """Render the leaf's config for the server found; return what it left out."""
        budgets = self.board.budgets
        plan = LeafPlan(
            server_name=self.server_name,
            listen=self.config.leaf.listen,
            monitor=self.config.leaf.monitor,
            max_payload=budgets.nats_max_payload,
            jetstream=self.config.leaf.jetstream,
            jetstream_domain=self.jetstream_domain,
            store_dir=self.config.host.data_dir / "jetstream",
            jetstream_max_memory_mb=budgets.jetstream_max_memory_mb,
            jetstream_max_file_mb=budgets.jetstream_max_file_mb,
            sync_interval=self.config.leaf.sync_interval,
            upstream=self.config.upstream,
        )
        rendered = render(plan, self.server.version)
        write_atomic(self.config.run_dir / LEAF_CONF, rendered.text.encode())
        for warning in rendered.warnings:
            logger.warning("%s", warning)
        return rendered.warnings

    def request_stop(self, sig: int | None = None) -> None:
        """Ask the host to shut down; a second SIGINT forces it."""
        if self._stop.is_set() and sig == signal.SIGINT:
            self._force = True
            logger.warning("second interrupt: forcing shutdown")
            pid = self.leaf.pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._stop.set()

    async def run(self, on_ready: Callable[[HostInfo], None] | None = None) -> None:
        """Start everything, serve until asked to stop, then shut down in order."""
        try:
            async with asyncio.TaskGroup() as tasks:
                await self._serve(tasks, on_ready)
        except BaseExceptionGroup as group:
            raise _first_of_ours(group) from None

    async def _serve(
        self, tasks: asyncio.TaskGroup, on_ready: Callable[[HostInfo], None] | None
    ) -> None:
        self.state = HostState.STARTING
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        watchdog: asyncio.Task[None] | None = None
        link: asyncio.Task[None] | None = None
        try:
            self.write_leaf_config()
            await self.leaf.start(tasks)
            self.nats = await self._connect()
            async with self._actor_runtime() as registry:
                await self._restore(registry)
                await self._start_lattice(tasks, registry)
                link = self._start_device_link(tasks, loop)
                info = self.info()
                write_atomic(self.config.run_dir / STATE_FILE, json.dumps(asdict(info)).encode())
                self.state = HostState.RUNNING
                self.notifier.ready(f"serving {info.client_url}")
                if self.notifier.watchdog_interval:
                    watchdog = tasks.create_task(self._watchdog(self.notifier.watchdog_interval))
                if on_ready is not None:
                    on_ready(info)
                await self._stop.wait()
                self.state = HostState.STOPPING
                self.notifier.stopping()
                logger.info("shutting down")
                await self._stop_lattice()
                await self._drain()
        finally:
            for task in (watchdog, link):
                if task is not None:
                    task.cancel()
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _start_device_link(
        self, tasks: asyncio.TaskGroup, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Task[None]:
        """Credential renewal for a fleet device, and SIGHUP: re-read the upstream."""
        from agent.device_link import DeviceLink

        link = DeviceLink(self)
        loop.add_signal_handler(signal.SIGHUP, link.request_reload)
        return tasks.create_task(link.run(), name="device-link")

    async def _connect(self) -> Any:
        import nats  # the client library is the largest import; load it when needed

        async def on_error(exc: Exception) -> None:
            logger.warning("local NATS connection: %s", exc)

        async def on_disconnect() -> None:
            if self.state is HostState.RUNNING:
                logger.warning("lost the connection to the local leaf node; reconnecting")

        async def on_reconnect() -> None:
            logger.info("reconnected to the local leaf node")

        try:
            return await nats.connect(
                servers=[self.client_url],
                name=f"lattice-edge {self.keys.host_id[:12]}",
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                # a fleet device may subscribe upstream only to its own inbox (docs/fleet.md)
                inbox_prefix=f"_INBOX_{self.keys.host_id}",
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise LeafConfigError(
                f"cannot connect to the leaf at {self.client_url}: {exc}"
            ) from exc

    async def _watchdog(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.notifier.watchdog()

    @contextlib.asynccontextmanager
    async def _actor_runtime(self) -> AsyncIterator[ActorRegistry]:
        """The sandbox and the actor registry; leaving it stops every actor."""
        budgets = self.board.budgets

        def caps_of(actor_id: str) -> tuple[str, ...] | None:
            actor = self.registry.get(actor_id) if self.registry else None
            return actor.caps if actor is not None else None

        caller = LatticeRpcClient(
            self.nats,
            lattice=self.config.host.lattice,
            host_id=self.keys.host_id,
            cluster_key=self.keys.cluster,
        )
        router = HostCallRouter(
            caps_of, self.links, capabilities=await self._capabilities(), lattice=caller
        )
        # Pack actors into as few workers as the budget allows: memory is what these
        # boards lack, and a worker is ~10 MB whether it holds one actor or thirty.
        per_worker = -(-budgets.max_actors // budgets.sandbox_workers)
        async with Sandbox(
            budgets, host_call_handler=router, on_quarantine=_quarantined, pack=per_worker
        ) as box:
            self.registry = ActorRegistry(
                box,
                ModuleCache(self.config.host.data_dir / "modules"),
                trusted_issuers=self.config.trust.trusted_issuers,
                allow_unsigned=self.config.trust.allow_unsigned,
                max_pages=budgets.actor_memory_pages,
                nats_client=self.nats,
            )
            try:
                yield self.registry
            finally:
                await self.registry.stop_all()
                self.registry = None

    @property
    def cluster_issuers(self) -> tuple[str, ...]:
        """Keys whose invocations this host accepts: the configured ones and its own."""
        own = self.keys.cluster.public_key
        return tuple(dict.fromkeys([own, *self.config.trust.cluster_issuers]))

    async def _start_lattice(self, tasks: asyncio.TaskGroup, registry: ActorRegistry) -> None:
        """Serve the control interface and actor RPC; announce the host."""
        board = self.board
        model = board.detection.model if board.detection else None
        facts = HostFacts(
            host_id=self.keys.host_id,
            cluster_key=self.keys.cluster.public_key,
            cluster_issuers=self.cluster_issuers,
            lattice=self.config.host.lattice,
            friendly_name=self.config.host.name,
            labels=host_labels(board.profile.name, model, self.config.host.labels),
            js_domain=self.jetstream_domain if self.config.leaf.jetstream else None,
            client_url=self.client_url,
        )
        data_dir = self.config.host.data_dir
        self.control = ControlServer(
            self.nats,
            facts,
            registry,
            self.links,
            tasks=tasks,
            on_change=self._changed,
            on_stop=self.request_stop,
            resources=lambda: device_resources(data_dir),
        )
        self.rpc = RpcServer(
            self.nats,
            registry,
            lattice=self.config.host.lattice,
            host_id=self.keys.host_id,
            cluster_issuers=self.cluster_issuers,
            tasks=tasks,
            emit_rpc_event=self.control.emit_rpc,
        )
        await self.rpc.sync()
        await self.control.start(board.budgets.heartbeat_interval_s)

    async def _changed(self) -> None:
        """Actors or links changed: persist the desired state and follow with RPC."""
        self.save_state()
        if self.rpc is not None:
            await self.rpc.sync()

    async def _stop_lattice(self) -> None:
        if self.control is not None:
            await self.control.stop()
        if self.rpc is not None:
            await self.rpc.close()

    async def _capabilities(self) -> Capabilities:
        """The capabilities the device serves itself, on its local leaf node."""
        from agent.capabilities import KeyValueCapability, MessagingCapability

        served = Capabilities([MessagingCapability(self.nats)])
        if self.config.leaf.jetstream:
            keyvalue = KeyValueCapability(self.nats)
            try:
                await keyvalue.open()
            except LatticeEdgeError as exc:
                logger.error("wasmcloud:keyvalue is unavailable: %s", exc)
            else:
                served.register(keyvalue)
        return served

    async def _restore(self, registry: ActorRegistry) -> None:
        """Bring back the saved actors and links; start the demo actor if asked to."""
        desired = self.state_store.load()
        for link in desired.links:
            self.links.put(link)
        for wanted in desired.actors:
            try:
                await registry.start(
                    wanted.actor_ref,
                    wanted.count,
                    wanted.annotations,
                    cached_sha256=wanted.module_sha256,
                )
            except LatticeEdgeError as exc:
                logger.error("cannot restore actor %s: %s", wanted.actor_id, exc)
        if self.demo:
            demo = next((a for a in registry.running() if a.name == DEMO_ACTOR_NAME), None)
            if demo is None and not desired.actors:
                demo = await registry.start(f"file://{demo_actor_path()}")
            if demo is not None:
                name = self.config.host.name.encode()
                answer = await registry.invoke(demo.actor_id, "Greet", name)
                self.demo_greeting = answer.response.decode("utf-8", "replace")
        self.save_state()

    def save_state(self) -> None:
        """Persist the actors and links that should come back after a restart."""
        actors = self.registry.desired() if self.registry is not None else ()
        self.state_store.save(DesiredState(actors, self.links.all()))

    async def _drain(self) -> None:
        if self.nats is not None and not self._force:
            try:
                await asyncio.wait_for(self.nats.drain(), DRAIN_TIMEOUT_S)
            except Exception as exc:  # nats-py raises several unrelated types on close
                logger.warning("draining the NATS connection failed: %s", exc)

    async def _shutdown(self) -> None:
        if self.state is HostState.STOPPED:
            return
        self.state = HostState.STOPPING
        if self.nats is not None and not self.nats.is_closed:
            with contextlib.suppress(Exception):
                await self.nats.close()
        await self.leaf.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.config.run_dir / STATE_FILE).unlink()
        self.state = HostState.STOPPED
        logger.info("stopped")


def _quarantined(actor_id: str, reason: str) -> None:
    logger.error("actor %s quarantined: %s", actor_id, reason)


DEMO_ACTOR_NAME = "Lattice Edge demo echo"


def demo_actor_path() -> Path:
    """Where the installed demo actor module lives."""
    from importlib import resources

    return Path(str(resources.files("agent.runtime.demo").joinpath("echo.wasm")))


def _first_of_ours(group: BaseExceptionGroup[Any]) -> BaseException:
    """Unwrap a task group's errors so callers see our exception, not a group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_of_ours(exc)
        if isinstance(exc, LatticeEdgeError | KeyboardInterrupt | SystemExit):
            return exc
    return group
