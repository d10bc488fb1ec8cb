"""The forwarder: keeps the outbox, runs forwarding sessions, pauses and resumes with the
uplink, and accounts for every message (``docs/store-and-forward.md``).

Lifecycle (:class:`ForwardState`): ``starting`` (creating the outbox; ``unavailable`` while
the leaf's JetStream refuses it) → ``forwarding`` (a :class:`~agent.forward.pipeline.Pipeline`
session runs) ⇄ ``paused`` (the session ended: the link is down, the hub is missing its
stream or refused) → ``stopped``. A paused forwarder wakes the instant the leaf logs its
uplink reconnecting (:class:`~agent.forward.link.UplinkWatch`), else on a backoff timer
that doubles from 50 ms to 30 s; it never polls the uplink while idle.

Counts survive restarts in ``<data_dir>/forward.json``, written atomically at start-up,
when something is dropped, before each session (so no consumer ever starts past an
uncounted drop), every minute while forwarding, and at shutdown, which marks the file
``clean``. After a run that died, what vanished from the outbox since the last write is
counted as forwarded (the outbox cannot say which of it was). Drops are reported in the
heartbeat's ``lattice_edge.forward`` section and as ``forward_dropped`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.background import Background
from agent.config import Config, HostPort
from agent.errors import ForwardError
from agent.forward.ledger import Ledger
from agent.forward.link import UplinkWatch
from agent.forward.outbox import Outbox, OutboxState
from agent.forward.pipeline import EndKind, Pipeline, SessionEnded
from agent.forward.plan import OutboxPlan, outbox_plan
from agent.forward.subjects import upstream_filter
from agent.fsutil import write_atomic
from agent.leaf.access import agent_inbox_prefix
from agent.logs import RateLimiter, escape
from profiles import Budgets

__all__ = ["FORWARD_STATE_FILE", "ForwardState", "Forwarder", "forwarder_for"]

logger = logging.getLogger("lattice_edge.forward")

FORWARD_STATE_FILE = "forward.json"
RETRY_MIN_S = 0.05
RETRY_MAX_S = 30.0
STATS_BUSY_S = 2.0  # how often the outbox's state is read while it holds anything
STATS_IDLE_S = 30.0
SAVE_EVERY_S = 60.0

Emit = Callable[[str, Mapping[str, Any]], None]


class ForwardState(enum.Enum):
    """Lifecycle of the forwarder."""

    STARTING = "starting"
    UNAVAILABLE = "unavailable"
    FORWARDING = "forwarding"
    PAUSED = "paused"
    STOPPED = "stopped"


class Forwarder:
    """Moves the outbox upstream; see the module docstring."""

    def __init__(
        self,
        nats_client: Any,
        plan: OutboxPlan,
        *,
        host_id: str,
        upstream_prefix: str,
        window: int,
        inbox_prefix: str,
        watch: UplinkWatch,
        background: Background,
        state_path: Path,
        emit: Emit | None = None,
        upstream_configured: bool = True,
        monitor: HostPort | None = None,
    ) -> None:
        self._nats = nats_client
        self.plan = plan
        self.outbox = Outbox(nats_client, plan)
        self._host_id = host_id
        self._prefix = upstream_prefix
        self._window = window
        self._inbox = f"{inbox_prefix}.fwd"
        self._watch = watch
        self._background = background
        self._state_path = state_path
        self._emit = emit
        self._upstream_configured = upstream_configured
        self.state = ForwardState.STOPPED
        self.reason: str | None = None
        self.ledger = Ledger()
        self._refusals: dict[int, int] = {}
        self._pipeline: Pipeline | None = None
        self._snapshot: OutboxState | None = None
        self._last_forwarded_at: float | None = None
        self._saved: dict[str, Any] = {}
        self._last_save = 0.0
        self._task: asyncio.Task[None] | None = None
        self._limiter = RateLimiter()
        self._activity = asyncio.Event()
        self._save_soon = False
        self._monitor = monitor
        self._confirming = False
        self._clean = False  # the counts on disk are exact: the last run stopped cleanly
        watch.listeners.append(self._link_changed)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, *, timeout: float = 5.0) -> None:
        """Create the outbox (waiting up to ``timeout``, so a ready host captures from the
        start), then forward from the host's task group under the background policy."""
        self.state = ForwardState.STARTING
        await self._load()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ensure_outbox()
        self._task = self._background.spawn(self._run(), what="forwarder")

    async def stop(self) -> None:
        """Stop forwarding (what is in flight is sent again next time) and save the counts."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.state = ForwardState.STOPPED
        await self._save(force=True, clean=True)

    def local_reconnected(self) -> None:
        """The host's connection to its leaf came back: the session's consumer is stale."""
        if self._pipeline is not None:
            self._pipeline.interrupt(EndKind.LOCAL_RECONNECT)

    def _link_changed(self, connected: bool) -> None:
        # A closed link loses whatever was on its way: end now instead of timing out. The
        # line is only a hint (a local client can get words of its own into the leaf's
        # log), so the leaf's monitoring endpoint confirms it first.
        pipeline = self._pipeline
        if connected or pipeline is None or not pipeline.inflight or self._confirming:
            return
        monitor = self._monitor
        if monitor is None:
            pipeline.interrupt(EndKind.LINK_CLOSED, "the leaf's uplink closed")
            return
        self._confirming = True
        check = self._confirm_closed(pipeline, monitor)
        self._background.spawn(check, what="forwarder link check")

    async def _confirm_closed(self, pipeline: Pipeline, monitor: HostPort) -> None:
        from agent.leaf.monitor import MonitorError, get_json

        try:
            _, leafz = await get_json(monitor, "/leafz", timeout=1.0)
        except MonitorError:
            leafz = None
        finally:
            self._confirming = False
        links = leafz.get("leafnodes") if isinstance(leafz, dict) else None
        if links == 0 and pipeline is self._pipeline:
            pipeline.interrupt(EndKind.LINK_CLOSED, "the leaf's uplink closed")

    async def _run(self) -> None:
        if self._snapshot is None:  # start() gave up waiting: keep trying
            await self._ensure_outbox()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._keep_stats())
            tasks.create_task(self._forward())

    async def _load(self) -> None:
        try:
            text = await asyncio.to_thread(self._state_path.read_text, encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("cannot read %s (%s); counting from zero", self._state_path, exc)
            text = ""
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        self.ledger = Ledger.from_json(data)
        if isinstance(data, dict):
            if isinstance(data.get("last_forwarded_at"), int | float):
                self._last_forwarded_at = float(data["last_forwarded_at"])
            self._clean = data.get("clean") is True
        # From now on the file is not exact until stop() says so.
        self._saved = {}
        await self._save(force=True)

    async def _ensure_outbox(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.outbox.ensure()
                state = await self.outbox.state()
            except ForwardError as exc:
                self.state = ForwardState.UNAVAILABLE
                self.reason = str(exc)
                self._limiter.log(logger, logging.ERROR, "outbox", "store-and-forward: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if not self._clean:
                # The last run died (or there was none): it acked messages after it last
                # saved its counts, and the outbox cannot say which of the missing ones
                # those were. Count them as forwarded; a drop in its last seconds, before
                # it could be counted and saved, goes uncounted.
                gone = state.first_seq - 1 - self.ledger.accounted
                if gone > 0:
                    self.ledger.accounted += gone
                    self.ledger.forwarded += gone
            self._snapshot = state
            self.state = ForwardState.PAUSED
            self.reason = "starting"
            plan = self.plan
            logger.info(
                "store-and-forward: outbox %s (%s; %d bytes, %g h) holds %d messages; "
                "forwarding to %s, %d in flight",
                plan.name, ", ".join(plan.subjects), plan.max_bytes, plan.max_age_s / 3600,
                state.messages, upstream_filter(self._prefix, self._host_id), self._window,
            )  # fmt: skip
            return

    # --- forwarding ----------------------------------------------------------------------

    async def _forward(self) -> None:
        delay = RETRY_MIN_S
        while True:
            link_up = self._watch.next_up()
            attempted = time.monotonic()
            try:
                await self._session()
            except SessionEnded as end:
                self._paused(end)
                if end.progressed:
                    delay = RETRY_MIN_S
                if end.kind is EndKind.LOCAL_RECONNECT:
                    delay = RETRY_MIN_S
            except ForwardError as exc:
                self._paused_by(f"the outbox: {exc}")
                with contextlib.suppress(ForwardError):
                    await self.outbox.ensure()
            except Exception as exc:
                self._paused_by(self._background.report(exc, "forwarder"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: see pipeline._requester
                    await link_up.wait()
            # However many hints arrive, at most one attempt per RETRY_MIN_S.
            await asyncio.sleep(max(0.0, attempted + RETRY_MIN_S - time.monotonic()))
            delay = RETRY_MIN_S if link_up.is_set() else min(delay * 2, RETRY_MAX_S)

    async def _session(self) -> None:
        ledger = self.ledger
        state = await self.outbox.state()
        self._snapshot = state
        self._count_drops(ledger.settle_stream(state.first_seq, None))
        await self._save(force=True)
        start = await self.outbox.reset_consumer(self._window)
        self._count_drops(ledger.settle_stream(start + 1, None))
        pipeline = Pipeline(
            self._nats,
            self.outbox,
            host_id=self._host_id,
            upstream_prefix=self._prefix,
            window=self._window,
            inbox=f"{self._inbox}.{secrets.token_hex(4)}",
            refusals=self._refusals,
            on_forwarded=self._forwarded,
            on_refused=self._refused,
        )
        self._pipeline = pipeline
        # With the uplink down a session is a probe that ends in "no responders" within
        # milliseconds; saying 'forwarding' meanwhile would put it in a heartbeat. Such a
        # session says so once it forwards something (_forwarded).
        if self._watch.connected:
            self._forwarding()
        try:
            await pipeline.run()
        finally:
            self._pipeline = None

    def _paused(self, end: SessionEnded) -> None:
        if end.kind is EndKind.NO_RESPONDERS:
            if not self._upstream_configured:
                why = "no upstream is configured; messages wait in the outbox"
            elif self._watch.connected:
                why = (
                    f"the uplink is up but nothing upstream captures "
                    f"{upstream_filter(self._prefix, self._host_id)} "
                    "(create the hub stream: lattice-edge fleet uplink init)"
                )
            else:
                why = "waiting for the uplink"
        else:
            why = end.detail or end.kind.value
        self._paused_by(why)

    def _paused_by(self, why: str) -> None:
        if self.state is ForwardState.FORWARDING and why != self.reason:
            self._limiter.log(logger, logging.INFO, f"paused:{why[:40]}",
                              "store-and-forward paused: %s", escape(why))  # fmt: skip
        self.state = ForwardState.PAUSED
        self.reason = why
        self._activity.set()

    def _count_drops(self, lost: int) -> None:
        if lost:
            self._dropped(lost, "budget")

    def _forwarding(self) -> None:
        self.state = ForwardState.FORWARDING
        self.reason = None

    def _forwarded(self, seq: int) -> None:
        if self.state is not ForwardState.FORWARDING:
            self._forwarding()
        self._count_drops(self.ledger.settle_forwarded(seq))
        self._last_forwarded_at = time.time()
        self._activity.set()

    def _refused(self, seq: int, why: str) -> None:
        self._count_drops(self.ledger.settle_refused(seq))
        logger.error(
            "store-and-forward: the hub refuses outbox message %d for good (%s); skipped it",
            seq,
            escape(why),
        )
        self._announce({"reason": "refused", "refused": 1, "seq": seq, "detail": why[:200]})

    def _dropped(self, count: int, reason: str) -> None:
        self._limiter.log(
            logger, logging.WARNING, "dropped",
            "store-and-forward: the outbox budget discarded %d unforwarded messages (%d in all)",
            count, self.ledger.dropped,
        )  # fmt: skip
        self._announce({"reason": reason, "dropped": count})

    def _announce(self, data: dict[str, Any]) -> None:
        body = {
            **data,
            "dropped_total": self.ledger.dropped,
            "refused_total": self.ledger.refused,
            "stream": self.plan.name,
            "budget_bytes": self.plan.budget_bytes,
            "max_age_s": self.plan.max_age_s,
        }
        if self._emit is not None:
            self._emit("forward_dropped", body)
        self._save_soon = True
        self._activity.set()

    # --- the outbox's state --------------------------------------------------------------

    async def _keep_stats(self) -> None:
        """Read the outbox's state: every 2 s while it holds anything or forwarding is
        paused (the budget may be discarding), else every 30 s or soon after activity."""
        while True:
            try:
                state = await self.outbox.state()
            except ForwardError as exc:
                logger.debug("store-and-forward: reading the outbox: %s", exc)
            except Exception as exc:  # a bug: reported, and the counting goes on
                self._background.report(exc, "forwarder statistics")
            else:
                self._snapshot = state
                held = self._pipeline.lowest_held if self._pipeline is not None else None
                self._count_drops(self.ledger.settle_stream(state.first_seq, held))
            await self._save(force=self._save_soon)
            refreshed = time.monotonic()
            busy = self.state is not ForwardState.FORWARDING or bool(
                self._snapshot and self._snapshot.messages
            )
            self._activity.clear()
            if busy:
                await asyncio.sleep(STATS_BUSY_S)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATS_IDLE_S):
                    await self._activity.wait()
            await asyncio.sleep(max(0.0, refreshed + STATS_BUSY_S - time.monotonic()))

    async def _save(self, *, force: bool = False, clean: bool = False) -> None:
        current: dict[str, Any] = {**self.ledger.to_json(), "clean": clean}
        now = time.monotonic()
        if current == self._saved or (not force and now - self._last_save < SAVE_EVERY_S):
            return
        self._save_soon = False
        data = {**current, "last_forwarded_at": self._last_forwarded_at}
        try:
            await asyncio.to_thread(
                write_atomic, self._state_path, json.dumps(data).encode(), mode=0o640
            )
        except OSError as exc:
            message = "store-and-forward: cannot save %s: %s"
            self._limiter.log(logger, logging.WARNING, "save", message, self._state_path, exc)
            return
        self._saved = current
        self._last_save = now

    # --- reporting -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The ``forward`` section of the agent's health (heartbeat and ``status``).

        Kept to what changes: it rides every heartbeat over the uplink (the static part —
        subjects, budgets, window — is in the config and the log).
        """
        snapshot = self._snapshot
        oldest = snapshot.first_time if snapshot is not None else None
        return {
            "state": self.state.value,
            "reason": self.reason,
            "waiting_messages": snapshot.messages if snapshot else None,
            "waiting_bytes": snapshot.bytes if snapshot else None,
            "oldest_age_s": round(max(0.0, time.time() - oldest), 1) if oldest else None,
            "in_flight": len(self._pipeline.inflight) if self._pipeline else 0,
            "forwarded": self.ledger.forwarded,
            "dropped": self.ledger.dropped,
            "refused": self.ledger.refused,
            "last_forwarded_at": round(self._last_forwarded_at, 3)
            if self._last_forwarded_at
            else None,
            "uplink_connected": self._watch.connected,
        }


def forwarder_for(
    config: Config,
    budgets: Budgets,
    host_id: str,
    nats_client: Any,
    *,
    watch: UplinkWatch,
    background: Background,
    emit: Emit | None,
) -> Forwarder:
    """The forwarder a host with ``config`` and ``budgets`` runs (not started yet)."""
    settings = config.forward
    plan = outbox_plan(
        host_id,
        settings.subjects,
        budget_mb=budgets.store_forward_mb,
        max_age_h=budgets.store_forward_max_age_h,
        max_payload=budgets.nats_max_payload,
    )
    return Forwarder(
        nats_client,
        plan,
        host_id=host_id,
        upstream_prefix=settings.upstream_prefix,
        window=settings.window,
        inbox_prefix=agent_inbox_prefix(host_id),
        watch=watch,
        background=background,
        state_path=config.host.data_dir / FORWARD_STATE_FILE,
        emit=emit,
        upstream_configured=config.upstream is not None,
        monitor=config.leaf.monitor,
    )
