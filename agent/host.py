"""The composition root: what starts, in which order, and how it stops.

Start-up: data-directory lock → config → identity → board profile → leaf config → leaf
node ready → NATS connection → desired state restored → lattice → firmware bridge (when
MCUs are configured) → run file → ``READY=1``. Shutdown reverses it, each step bounded:
stop taking requests, stop the firmware bridge, drain NATS, lame-duck and stop the leaf,
remove the run file, release the lock. SIGTERM and SIGINT request shutdown; a second
SIGINT forces it. SIGHUP (and ``lattice-edge reload``) reloads the config:
:meth:`Host.reload`, see :mod:`agent.reload`.

Every background task runs under :class:`~agent.background.Background`'s one error
policy, so nothing but shutdown ends the host. A host is made by
:func:`agent.launch.prepare_host` (the checks that come before any process starts) and
run in-process for tests by :func:`agent.launch.run_host`.
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
from typing import TYPE_CHECKING, Any

from agent import __version__, running
from agent.background import Background
from agent.boards import Board
from agent.capabilities.base import Capabilities
from agent.config import Config
from agent.datadir import DataDirLock
from agent.errors import LatticeEdgeError, LeafConfigError
from agent.forward.link import UplinkWatch
from agent.fsutil import ensure_dir, write_atomic
from agent.identity.host import HostKeys
from agent.identity.jwt import read_creds
from agent.identity.keys import KeyPair
from agent.identity.local import load_agent_user
from agent.lattice import subjects
from agent.lattice.actors import ActorRegistry
from agent.lattice.control import ControlServer, HostFacts, host_labels
from agent.lattice.hostcalls import HostCallRouter, LinkTable
from agent.lattice.refs import MODULE_BUCKET, FetchPolicy, ModuleCache
from agent.lattice.rpc import LatticeRpcClient, RpcServer
from agent.leaf.access import LocalAccess, agent_inbox_prefix
from agent.leaf.binary import NatsServer
from agent.leaf.mqtt import MqttListener
from agent.leaf.render import LeafPlan, render
from agent.leaf.supervisor import LeafSupervisor
from agent.resources import device_resources
from agent.runtime.demo import demo_actor_bytes
from agent.runtime.sandbox import Sandbox
from agent.state import DesiredState, StateKeeper, StateStore
from agent.systemd import Notifier

if TYPE_CHECKING:
    from agent.capabilities.subscriptions import Subscriptions
    from agent.device_link import DeviceLink
    from agent.forward.forwarder import Forwarder
    from agent.reload import ReloadPlan

__all__ = ["DEMO_ACTOR_NAME", "STATE_FILE", "Host", "HostInfo", "HostState"]

logger = logging.getLogger("lattice_edge.host")

STATE_FILE = "agent.json"
LEAF_CONF = "nats-server.conf"
LEAF_PID = "nats-server.pid"
DRAIN_TIMEOUT_S = 5.0
STATE_RETRY_S = 5.0  # how often a state file the disk refused is written again


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
    systemd_unit: str | None = None  # set when systemd runs the agent (logs go to the journal)
    log_file: str | None = None


class Host:
    """One running Lattice Edge host: its leaf node and its connection to it."""

    def __init__(
        self,
        config: Config,
        *,
        keys: HostKeys,
        board: Board,
        server: NatsServer,
        access: LocalAccess,
        lock: DataDirLock | None = None,
        demo: bool = False,
        mqtt: MqttListener | None = None,
    ) -> None:
        self.config = config
        self.access = access
        self.mqtt = mqtt
        self.lock = lock
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
        self.uplink = UplinkWatch()  # the leaf's uplink, from its own log lines
        self.leaf.line_hooks.append(self.uplink.feed)
        self.forwarder: Forwarder | None = None
        self.reconnect_hooks: list[Callable[[], None]] = []  # the leaf connection is back
        self.nats: Any = None  # nats.aio.client.Client once connected
        self.registry: ActorRegistry | None = None
        self.control: ControlServer | None = None
        self.rpc: RpcServer | None = None
        self.firmware: Any = None  # firmware_bridge.bridge.FirmwareBridge when MCUs are configured
        self.subscriptions: Subscriptions | None = None  # wasmcloud:messaging SUBSCRIPTION links
        self.device_link: DeviceLink | None = None  # credential renewal (fleet devices)
        self.links = LinkTable()
        self.state_store = StateStore(config.host.data_dir / "state.json")
        self.keeper = StateKeeper(self.state_store, self._running_state)
        self.background: Background | None = None
        self.health_sections: dict[str, Callable[[], Any]] = {}
        self._stop = asyncio.Event()
        self._force = False
        self._reloading = asyncio.Lock()

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
            config=str(self.config.source.absolute()) if self.config.source else None,
            nats_server=str(self.server.path),
            nats_server_version=self.server.version_text,
            pid=os.getpid(),
            started_at=time.time(),
            systemd_unit=running.service_unit(),
            log_file=str(self.config.log_file.path) if self.config.log_file else None,
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
            access=self.access,
            mqtt=self.mqtt,
            deny_imports=self.config.forward.subjects if self.config.forward.enabled else (),
        )
        rendered = render(plan, self.server.version)
        # 0600: it names the local users' passwords.
        write_atomic(self.config.run_dir / LEAF_CONF, rendered.text.encode(), mode=0o600)
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
                self.background = Background(tasks)
                await self._serve(tasks, on_ready)
        except BaseExceptionGroup as group:
            _log_group(group)
            raise _first_of_ours(group) from None
        finally:
            if self.lock is not None:
                self.lock.release()

    async def _serve(
        self, tasks: asyncio.TaskGroup, on_ready: Callable[[HostInfo], None] | None
    ) -> None:
        self.state = HostState.STARTING
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        # A closed terminal sends SIGHUP: reload, never die of it (daemons' convention).
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        watchdog: asyncio.Task[None] | None = None
        try:
            ensure_dir(self.config.run_dir)
            self.write_leaf_config()
            await self.leaf.start(tasks)
            self.nats = await self._connect()
            async with self._actor_runtime() as registry:
                await self._restore(registry)
                await self._start_lattice(registry)
                await self._start_forwarding()
                assert self.background is not None
                self.background.spawn(self._keep_state_saved(), what="state file retry")
                self._start_device_link(self.background)
                await self._start_firmware(tasks)
                info = self.info()
                write_atomic(self.config.run_dir / STATE_FILE, json.dumps(asdict(info)).encode())
                running.register(asdict(info))
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
                if self.forwarder is not None:
                    await self.forwarder.stop()
                await self._stop_firmware()
                await self._drain()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            await self._stop_firmware()
            if self.background is not None:
                self.background.cancel_all()  # the device link, retries, pending events
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _start_device_link(self, background: Background) -> None:
        """Credential renewal for a fleet device (and its new link after a reload)."""
        from agent.device_link import DeviceLink

        self.device_link = DeviceLink(self)
        background.spawn(self.device_link.run(), what="device link")

    async def _connect(self) -> Any:
        import nats  # the client library is the largest import; load it when needed

        async def on_error(exc: Exception) -> None:
            logger.warning("local NATS connection: %s", exc)

        async def on_disconnect() -> None:
            if self.state is HostState.RUNNING:
                logger.warning("lost the connection to the local leaf node; reconnecting")

        async def on_reconnect() -> None:
            logger.info("reconnected to the local leaf node")
            for hook in self.reconnect_hooks:
                hook()

        agent_user: KeyPair = load_agent_user(self.config.host.data_dir)
        try:
            return await nats.connect(
                servers=[self.client_url],
                nkeys_seed_str=agent_user.seed,
                # Only the agent reads its replies locally; upstream a fleet device may
                # subscribe only to its own inbox (docs/fleet.md).
                inbox_prefix=agent_inbox_prefix(self.keys.host_id),
                name=f"lattice-edge {self.keys.host_id[:12]}",
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
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
            caps_of,
            self.links,
            capabilities=await self._capabilities(),
            lattice=caller,
            linked_in_host=("wasmcloud:messaging",),  # the host is its provider
        )
        if self.config.leaf.jetstream:
            await self._module_bucket()
        # Pack actors into as few workers as the budget allows: memory is what these
        # boards lack, and a worker is ~10 MB whether it holds one actor or thirty.
        per_worker = -(-budgets.max_actors // budgets.sandbox_workers)
        async with Sandbox(
            budgets,
            host_call_handler=router,
            on_quarantine=self._on_quarantine,
            on_quarantine_expired=self._on_quarantine_expired,
            pack=per_worker,
        ) as box:
            max_bytes = budgets.max_module_mb * 2**20
            self.registry = ActorRegistry(
                box,
                ModuleCache(self.config.host.data_dir / "modules", max_bytes=max_bytes),
                trusted_issuers=self.config.trust.trusted_issuers,
                allow_unsigned=self.config.trust.allow_unsigned,
                max_pages=budgets.actor_memory_pages,
                nats_client=self.nats,
                policy=FetchPolicy(self.config.actors.file_roots, max_bytes),
                allow_legacy_claims=self.config.actors.allow_legacy_claims,
                pinned_digests=self.config.actors.pinned_modules,
            )
            try:
                yield self.registry
            finally:
                await self.registry.stop_all()
                self.registry = None

    def _on_quarantine(self, sandbox_key: str, reason: str) -> None:
        actor_id, _, instance_id = sandbox_key.partition("/")
        logger.error("actor %s (instance %s) quarantined: %s", actor_id, instance_id, reason)
        if self.control is not None:
            data = {"public_key": actor_id, "instance_id": instance_id, "reason": reason}
            self.control.emit("actor_quarantined", data)

    def _on_quarantine_expired(self, sandbox_key: str, error: str | None) -> None:
        actor_id, _, instance_id = sandbox_key.partition("/")
        if error is None:
            logger.info("actor %s (instance %s) is out of quarantine", actor_id, instance_id)
        else:
            logger.error("actor %s (instance %s) did not reload: %s", actor_id, instance_id, error)
        if self.control is not None:
            data = {"public_key": actor_id, "instance_id": instance_id, "error": error or ""}
            self.control.emit("actor_quarantine_ended", data)

    @property
    def cluster_issuers(self) -> tuple[str, ...]:
        """Keys whose invocations this host accepts: the configured ones and its own."""
        own = self.keys.cluster.public_key
        return tuple(dict.fromkeys([own, *self.config.trust.cluster_issuers]))

    async def _start_lattice(self, registry: ActorRegistry) -> None:
        """Serve the control interface and actor RPC; announce the host."""
        from agent.reload import answer_reload

        board = self.board
        facts = HostFacts(
            host_id=self.keys.host_id,
            cluster_key=self.keys.cluster.public_key,
            cluster_issuers=self.cluster_issuers,
            lattice=self.config.host.lattice,
            friendly_name=self.config.host.name,
            labels=self._labels(),
            js_domain=self.jetstream_domain if self.config.leaf.jetstream else None,
            client_url=self.client_url,
        )
        data_dir = self.config.host.data_dir
        assert self.background is not None
        from agent.capabilities.subscriptions import Subscriptions

        self.subscriptions = Subscriptions(self.nats, registry, self.links, self.background)
        self.health_sections["subscriptions"] = self.subscriptions.health
        self.control = ControlServer(
            self.nats,
            facts,
            registry,
            self.links,
            keeper=self.keeper,
            background=self.background,
            on_change=self._changed,
            on_stop=self.request_stop,
            resources=lambda: device_resources(data_dir),
            health=self.health,
            check_link=self.subscriptions.check_link,
        )
        self.rpc = RpcServer(
            self.nats,
            registry,
            lattice=self.config.host.lattice,
            host_id=self.keys.host_id,
            cluster_issuers=self.cluster_issuers,
            background=self.background,
            emit_rpc_event=self.control.emit_rpc,
        )
        await self.rpc.sync()
        await self.subscriptions.sync()
        await self.control.start(board.budgets.heartbeat_interval_s)
        await self.nats.subscribe(subjects.agent_health(self.keys.host_id), cb=self._answer_health)
        await self.nats.subscribe(
            subjects.agent_reload(self.keys.host_id), cb=answer_reload(self.reload)
        )

    def _labels(self) -> dict[str, str]:
        model = self.board.detection.model if self.board.detection else None
        return host_labels(self.board.profile.name, model, self.config.host.labels)

    # --- reload -----------------------------------------------------------------------

    async def reload(self) -> ReloadPlan:
        """Load the config file again and apply what can change while running.

        Raises ConfigError (naming key and file) when the new file is invalid; the host
        then keeps running on the config it has. See :mod:`agent.reload`.
        """
        from agent.reload import load_again, plan_reload

        async with self._reloading:
            new = await asyncio.to_thread(load_again, self.config)
            plan = plan_reload(self.config, new)
            upstream = plan.effective.upstream
            relink = any(c.key.split(".")[0] == "upstream" for c in plan.changed)
            if relink and upstream is not None and upstream.credentials is not None:
                await asyncio.to_thread(read_creds, upstream.credentials)  # CredsError: keep
            self._apply_runtime_config(plan.effective)
            if relink:
                # A new upstream (an enrollment, new URLs): the leaf restarts with it; the
                # agent, its actors and its local clients carry on.
                self.write_leaf_config()
                await self.leaf.restart()
            if self.device_link is not None:
                self.device_link.request_reload()
        logger.info("%s", plan.summary())
        return plan

    def _apply_runtime_config(self, config: Config) -> None:
        """The one place a reload changes a running host (keys: agent.reload.RUNTIME_KEYS)."""
        from agent.logs import set_level

        self.config = config
        if self.registry is not None:
            self.registry.trusted_issuers = config.trust.trusted_issuers
            self.registry.allow_unsigned = config.trust.allow_unsigned
        if self.rpc is not None:
            self.rpc.cluster_issuers = self.cluster_issuers
        if self.control is not None:
            self.control.facts.cluster_issuers = self.cluster_issuers
            self.control.facts.labels = self._labels()
        set_level(config.log_level)

    def _on_hangup(self) -> None:
        from agent.reload import reload_logged

        if self.state is not HostState.RUNNING or self.background is None:
            logger.warning("SIGHUP during start-up or shutdown: not reloading")
            return
        self.background.spawn(reload_logged(self.reload), what="reload on SIGHUP")

    async def _start_forwarding(self) -> None:
        """Store-and-forward (``[forward]``): the outbox on the leaf and the forwarder."""
        if not self.config.forward.enabled:
            return
        from agent.forward.forwarder import forwarder_for

        assert self.background is not None and self.control is not None
        self.forwarder = forwarder_for(
            self.config, self.board.budgets, self.keys.host_id, self.nats,
            watch=self.uplink, background=self.background, emit=self.control.emit,
        )  # fmt: skip
        self.reconnect_hooks.append(self.forwarder.local_reconnected)
        self.health_sections["forward"] = self.forwarder.health
        await self.forwarder.start()

    async def _answer_health(self, msg: Any) -> None:
        if msg.reply:
            await msg.respond(json.dumps(self.health()).encode())

    async def _start_firmware(self, tasks: asyncio.TaskGroup) -> None:
        """The firmware bridge, only with ``[[firmware.devices]]`` (its imports cost memory)."""
        if self.config.firmware.devices:
            from firmware_bridge import start_bridge

            self.firmware = await start_bridge(self, tasks)

    async def _stop_firmware(self) -> None:
        if self.firmware is not None:
            firmware, self.firmware = self.firmware, None
            await firmware.stop()

    async def _changed(self) -> None:
        """Actors or links changed (the keeper has saved them): follow with subscriptions."""
        if self.rpc is not None:
            await self.rpc.sync()
        if self.subscriptions is not None:
            await self.subscriptions.sync()

    def health(self) -> dict[str, Any]:
        """The agent's own condition, for the heartbeat and ``status``.

        Subsystems add their own sections to :attr:`health_sections` (name → callable).
        """
        failed = self.keeper.failed()
        report: dict[str, Any] = {
            "state_saved": self.keeper.saved,
            "state_error": self.keeper.error,
            "restore_failed": [
                {"actor_id": a.actor_id, "actor_ref": a.actor_ref, "error": a.error} for a in failed
            ],
            "leaf_restarts": self.leaf.restarts,
            "background_failures": self.background.failures if self.background else 0,
        }
        for name, section in self.health_sections.items():
            report[name] = section()
        return report

    async def _keep_state_saved(self) -> None:
        """Write the desired state again while the disk refuses it."""
        while True:
            await asyncio.sleep(STATE_RETRY_S)
            if not self.keeper.saved:
                await asyncio.to_thread(self.keeper.try_save)

    async def _stop_lattice(self) -> None:
        if self.control is not None:
            await self.control.stop()
        if self.rpc is not None:
            await self.rpc.close()
        if self.subscriptions is not None:
            await self.subscriptions.close()

    async def _module_bucket(self) -> None:
        """The object store the local CLI uploads modules to (``actor start FILE``)."""
        import nats.errors
        import nats.js.api
        import nats.js.errors

        size = self.board.budgets.jetstream_max_file_mb // 4 * 2**20
        config = nats.js.api.ObjectStoreConfig(
            description="actor modules uploaded by the local CLI",
            max_bytes=size,
            storage=nats.js.api.StorageType.FILE,
        )
        try:
            await self.nats.jetstream(timeout=5).create_object_store(MODULE_BUCKET, config)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            logger.error("cannot create the module bucket %s: %s", MODULE_BUCKET, exc)

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
        """Bring back the saved actors and links; start the demo actor if asked to.

        An actor that cannot be restored stays in the state file with the reason (and in
        ``status``), so nothing wanted is dropped silently.
        """
        desired = await asyncio.to_thread(self.state_store.load)
        for link in desired.links:
            self.links.put(link)
        for wanted in desired.actors:
            try:
                await registry.start(
                    wanted.actor_ref,
                    wanted.count,
                    wanted.annotations,
                    cached_sha256=wanted.module_sha256 or None,
                )
            except LatticeEdgeError as exc:
                logger.error(
                    "cannot restore actor %s: %s", wanted.actor_id or wanted.actor_ref, exc
                )
                self.keeper.restore_failed(wanted, str(exc))
        if self.demo:
            greeter = next((a for a in registry.running() if a.name == DEMO_ACTOR_NAME), None)
            if greeter is None and not desired.actors:
                digest = await asyncio.to_thread(registry.cache.put, demo_actor_bytes())
                greeter = await registry.start(f"sha256:{digest}")
            if greeter is not None:
                name = self.config.host.name.encode()
                answer = await registry.invoke(greeter.actor_id, "Greet", name)
                self.demo_greeting = answer.response.decode("utf-8", "replace")
        await asyncio.to_thread(self.keeper.try_save)

    def _running_state(self) -> DesiredState:
        actors = self.registry.desired() if self.registry is not None else ()
        return DesiredState(actors, self.links.all())

    def save_state(self) -> None:
        """Persist the actors and links that should come back after a restart."""
        self.keeper.save()

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
        with contextlib.suppress(OSError):
            (self.config.run_dir / STATE_FILE).unlink()
        running.unregister(os.getpid())
        self.state = HostState.STOPPED
        logger.info("stopped")


def _log_group(group: BaseExceptionGroup[Any]) -> None:
    """Log every failure of a task group, not just the first one we re-raise."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            _log_group(exc)
        elif not isinstance(exc, LatticeEdgeError | KeyboardInterrupt | SystemExit):
            logger.error("host task failed", exc_info=exc)


DEMO_ACTOR_NAME = "Lattice Edge demo echo"


def _first_of_ours(group: BaseExceptionGroup[Any]) -> BaseException:
    """Unwrap a task group's errors so callers see our exception, not a group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_of_ours(exc)
        if isinstance(exc, LatticeEdgeError | KeyboardInterrupt | SystemExit):
            return exc
    return group
