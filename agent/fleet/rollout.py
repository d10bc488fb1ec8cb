"""The rollout reconciler inside ``fleet serve``: make every matching host run each deployment.

It learns about hosts from the lattice itself — ``wasmbus.evt.{lattice}`` (``host_started``,
``host_heartbeat``, ``actor_started`` / ``_stopped`` / ``_start_failed``, …) and, every
sweep, an ``auction.actor`` per deployment with its selector — and about deployments from a
watch on the fleet KV (``deploy.>``). Events and bids are only hints: anyone on the lattice
can publish an event naming another host. What a host runs and which labels it has is taken
from ``get.{host}.inv``, which only that host can answer (its template confines that
subject to it). Then, per deployment and host, it sends one 0.x control command —
``cmd.{host}.la`` to start, ``scale`` to correct the count or stop (count 0), ``upd`` to
move to a new module with the same actor key (a new key: start the new, then stop the old)
— and waits for the host to report the result.

Idempotent across restarts and between several reconcilers: a command is only sent by the
reconciler that took the lease in ``status.<name>.<host>`` (a KV ``update`` against the
revision read), updates take one of ``max_unavailable`` slots (``slot.<name>.<n>``) the same
way, and leases expire, so a reconciler killed with -9 leaves nothing locked for longer than
the lease. Should two commands ever overlap (a start slower than its lease), the host ends
up with more instances than asked for and the next pass scales it back.

Failures (``actor_start_failed``, a refused command) are recorded with the host's error text
and retried with exponential backoff up to ``rollout.retry_max``; a host that does not answer
is "pending" until it comes back — its next heartbeat or the next sweep reconciles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.errors import CommandRefused, FleetStoreError, LatticeEdgeError
from agent.fleet.deployments import ANNOTATION, VERSION_ANNOTATION, Deployment, labels_match
from agent.fleet.inventory import ActorSeen, parse_inventory, sha_of
from agent.fleet.registrar import failpoint
from agent.fleet.rollout_records import UNREACHABLE_PROBE_S, RolloutRecords
from agent.fleet.store import Conflict, FleetStore, Record
from agent.identity.keys import KeyKind, is_public_key
from agent.lattice import subjects as lattice_subjects

__all__ = ["Reconciler"]

logger = logging.getLogger("lattice_edge.fleet.rollout")

WORKERS = 8
INVENTORY_TIMEOUT_S = 3.0
AUCTION_WAIT_S = 1.0
MAX_EVENT_BYTES = 256 * 1024
RETRY_INITIAL_S = 2.0
# How a host's refusal of `upd` is recorded, so the next try stops and starts instead.
UPD_REFUSED = "upd refused"
_EVENT_PREFIX = "com.wasmcloud.lattice."


class Reconciler:
    """Drives hosts towards the fleet's deployments; see the module docstring."""

    def __init__(
        self,
        nats_client: Any,
        store: FleetStore,
        *,
        lattice: str,
        owner: str,
        lease_s: float,
        retry_max_s: float,
        sweep_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nats = nats_client
        self.store = store
        self.lattice = lattice
        self.owner = owner
        self.lease_s = lease_s
        self.retry_max_s = retry_max_s
        self.sweep_s = sweep_s or max(2.0, min(lease_s, 10.0))
        self.clock = clock
        self.deployments: dict[str, Deployment] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, list[tuple[str, str]]] = {}
        self._waiting: dict[str, set[str]] = {}  # deployment -> hosts waiting for a slot
        self._ready = asyncio.Event()
        self._subscription: Any = None
        self.records = RolloutRecords(store, owner=owner, lease_s=lease_s)

    # --- running ---------------------------------------------------------------------------

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """Subscribe to the lattice's events and start the watch, sweep and workers."""
        self._subscription = await self._nats.subscribe(
            lattice_subjects.events(self.lattice), cb=self._on_event
        )
        tasks.create_task(self._forever(self._watch_deployments, "watching deployments"))
        tasks.create_task(self._forever(self._sweep, "sweeping the lattice"))
        for _ in range(WORKERS):
            tasks.create_task(self._forever(self._work, "reconciling"))

    async def stop(self) -> None:
        """Stop listening to events (the tasks end with their task group)."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _forever(self, step: Callable[[], Any], what: str) -> None:
        # One error policy for background work: log, back off, go on. Our own errors (the
        # hub is away) are one line each; anything else is a bug and gets its traceback.
        delay = 1.0
        while True:
            try:
                await step()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except LatticeEdgeError as exc:
                logger.error("%s failed: %s; retrying in %.0f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception:
                logger.exception("%s failed; retrying in %.0f s", what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def mark(self, host_id: str) -> None:
        """Reconcile ``host_id`` soon (once, however often it is marked meanwhile)."""
        if host_id in self._busy:
            self._again.add(host_id)
        elif host_id not in self._queued:
            self._queued.add(host_id)
            self._queue.put_nowait(host_id)

    # --- inputs ----------------------------------------------------------------------------

    async def _on_event(self, msg: Any) -> None:
        data = bytes(msg.data)
        if len(data) > MAX_EVENT_BYTES:
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        source, kind = event.get("source"), event.get("type")
        if not isinstance(source, str) or not is_public_key(source, KeyKind.SERVER):
            return
        if not isinstance(kind, str) or not kind.startswith(_EVENT_PREFIX):
            return
        name = kind.removeprefix(_EVENT_PREFIX)
        data_field = event.get("data")
        payload: dict[str, Any] = data_field if isinstance(data_field, dict) else {}
        if name in ("actor_start_failed", "actor_update_failed"):
            what = str(payload.get("actor_ref") or payload.get("public_key") or "")
            error = str(payload.get("error") or payload.get("reason") or "failed")[:500]
            failures = self._failures.setdefault(source, [])
            failures.append((what, error))
            del failures[:-16]
        self.mark(source)

    async def _watch_deployments(self) -> None:
        async for item in self.store.watch("deploy.>"):
            if item is None:
                self._ready.set()
                await self._mark_known_hosts()
                continue
            if isinstance(item, str):
                self.deployments.pop(item.split(".", 1)[-1], None)
                continue
            deployment = Deployment.from_json(item.value)
            if deployment is None:
                logger.error("the deployment record %s is damaged; ignoring it", item.key)
                continue
            previous = self.deployments.get(deployment.name)
            self.deployments[deployment.name] = deployment
            if previous is None or previous.version != deployment.version:
                logger.info(
                    "deployment %s is at version %d (%s)",
                    deployment.name,
                    deployment.version,
                    deployment.state,
                )
                if self._ready.is_set():
                    await self._mark_known_hosts()
                    await self._auction(deployment)

    async def _sweep(self) -> None:
        await self._ready.wait()
        await asyncio.sleep(self.sweep_s)
        await self._refresh_deployments()
        await self._mark_known_hosts()
        for deployment in list(self.deployments.values()):
            if deployment.active:
                await self._auction(deployment)

    async def _refresh_deployments(self) -> None:
        """Re-read the deployments, in case the watch missed a change (a hub reconnect)."""
        current = {}
        for record in await self.store.scan("deploy"):
            deployment = Deployment.from_json(record.value)
            if deployment is not None:
                current[deployment.name] = deployment
        for name, deployment in current.items():
            known = self.deployments.get(name)
            if known is None or known.version < deployment.version:
                logger.info("deployment %s is at version %d (found by the sweep)", name,
                            deployment.version)  # fmt: skip
                self.deployments[name] = deployment

    async def _mark_known_hosts(self) -> None:
        now = self.clock()
        for record in await self.store.scan("host"):
            since = record.value.get("unreachable_since")
            probed = record.value.get("probed_at") or 0
            if since and now - float(probed) < UNREACHABLE_PROBE_S:
                continue  # offline: its heartbeat will tell us when it is back
            self.mark(record.key.split(".", 1)[1])

    async def _auction(self, deployment: Deployment) -> None:
        """Ask which hosts fit the selector (an ``auction.actor``); bids are hints."""
        inbox = self._nats.new_inbox()
        sub = await self._nats.subscribe(inbox)
        try:
            body = json.dumps(
                {"actor_ref": deployment.actor_ref, "constraints": deployment.selector}
            )
            await self._nats.publish(
                lattice_subjects.auction_actor(self.lattice), body.encode(), reply=inbox
            )
            deadline = time.monotonic() + AUCTION_WAIT_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await sub.next_msg(timeout=left)
                except Exception:  # nats-py's TimeoutError: no more bids
                    break
                with contextlib.suppress(ValueError, AttributeError):
                    host_id = json.loads(message.data).get("host_id")
                    if isinstance(host_id, str) and is_public_key(host_id, KeyKind.SERVER):
                        self.mark(host_id)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _work(self) -> None:
        host_id = await self._queue.get()
        await self._ready.wait()
        self._queued.discard(host_id)
        self._busy.add(host_id)
        try:
            await self.reconcile_host(host_id)
        finally:
            self._busy.discard(host_id)
            if host_id in self._again:
                self._again.discard(host_id)
                self.mark(host_id)

    # --- one host --------------------------------------------------------------------------

    async def _inventory(self, host_id: str) -> bytes | None:
        subject = lattice_subjects.get_inventory(self.lattice, host_id)
        try:
            reply = await self._nats.request(subject, b"", timeout=INVENTORY_TIMEOUT_S)
        except Exception:  # no responders, timeout, disconnected: the host is not reachable
            return None
        return bytes(reply.data)

    async def reconcile_host(self, host_id: str) -> None:
        """Bring one host in line with every deployment."""
        now = self.clock()
        raw = await self._inventory(host_id)
        if raw is None:
            await self._unreachable(host_id, now)
            return
        try:
            labels, name, actors = parse_inventory(host_id, raw)
        except (ValueError, TypeError) as exc:
            logger.warning("host %s sent an unusable inventory: %s", host_id, exc)
            return
        await self.records.save_host(host_id, name, labels, actors, now)
        failures = self._failures.pop(host_id, [])
        for deployment in list(self.deployments.values()):
            try:
                await self._reconcile(deployment, host_id, labels, actors, failures, now)
            except Conflict:
                self.mark(host_id)  # someone else changed its records: look again
            except FleetStoreError as exc:
                logger.warning("deployment %s on %s: %s", deployment.name, host_id, exc)

    async def _unreachable(self, host_id: str, now: float) -> None:
        since = await self.records.unreachable(host_id, now)
        if since is None:
            return  # never seen: nothing to say about it
        for deployment in self.deployments.values():
            status = await self.records.status(deployment, host_id)
            if status is not None and status.value.get("reason") != "host unreachable":
                await self.records.write_status(
                    status,
                    deployment,
                    host_id,
                    "pending",
                    now,
                    reason="host unreachable",
                    since=since,
                    lease=False,
                )

    async def _reconcile(
        self,
        deployment: Deployment,
        host_id: str,
        labels: dict[str, str],
        actors: dict[str, ActorSeen],
        failures: list[tuple[str, str]],
        now: float,
    ) -> None:
        ours = {
            a.actor_id: a
            for a in actors.values()
            if a.deployment == deployment.name
            or (a.deployment is None and a.actor_id == deployment.actor_id)
        }
        wanted = deployment.active and labels_match(labels, deployment.selector)
        status = await self.records.status(deployment, host_id)
        if not wanted and not ours:
            if status is not None:
                await self.records.delete_status(status)
            await self._release_slot(deployment, host_id)
            return
        current = ours.get(deployment.actor_id) if wanted else None
        stale = [a for a in ours.values() if a.actor_id != deployment.actor_id or not wanted]
        settled = current is not None and not stale and current.image_ref == deployment.actor_ref
        if settled and current is not None and current.count == deployment.count:
            await self._running(status, deployment, host_id, current, now)
            return
        failure = next(
            (
                error
                for what, error in failures
                if what in (deployment.actor_ref, deployment.actor_id)
            ),
            None,
        )
        value = status.value if status is not None else {}
        attempts = int(value.get("attempts") or 0)
        if failure is not None and value.get("state") in ("pending", "updating"):
            await self._failed(status, deployment, host_id, failure, attempts, now)
            return
        if float(value.get("retry_at") or 0) > now:
            return  # backing off after a failure, or a command still in flight
        if (
            value.get("owner") not in (None, self.owner)
            and float(value.get("lease_until") or 0) > now
        ):
            return  # another reconciler is on it
        if not wanted:
            await self._command(
                status,
                deployment,
                host_id,
                "stop",
                attempts,
                now,
                _stop_commands(stale),
            )
            return
        annotations = {ANNOTATION: deployment.name, VERSION_ANNOTATION: str(deployment.version)}
        if current is None:
            body = {
                "actor_ref": deployment.actor_ref,
                "host_id": host_id,
                "count": deployment.count,
                "annotations": annotations,
            }
            await self._command(status, deployment, host_id, "start", attempts, now, [("la", body)])
        elif current.image_ref != deployment.actor_ref:
            if not await self.records.take_slot(deployment, host_id, now):
                self._waiting.setdefault(deployment.name, set()).add(host_id)
                await self.records.write_status(
                    status,
                    deployment,
                    host_id,
                    "pending",
                    now,
                    reason="waiting for an update slot",
                    lease=False,
                )
                return
            if str(value.get("error") or "").startswith(UPD_REFUSED):
                # A host without `upd`: stop the old module, start the new one.
                stop = {"actor_id": current.actor_id, "actor_ref": current.image_ref, "count": 0}
                start = {"actor_ref": deployment.actor_ref, "host_id": host_id,
                         "count": deployment.count, "annotations": annotations}  # fmt: skip
                commands = [("scale", stop), ("la", start)]
            else:
                commands = [("upd", {"new_actor_ref": deployment.actor_ref,
                                     "actor_id": current.actor_id, "host_id": host_id,
                                     "annotations": annotations})]  # fmt: skip
            await self._command(status, deployment, host_id, "update", attempts, now, commands)
        elif current.count != deployment.count:
            body = {
                "actor_id": current.actor_id,
                "actor_ref": current.image_ref,
                "count": deployment.count,
                "annotations": annotations,
            }
            await self._command(
                status, deployment, host_id, "scale", attempts, now, [("scale", body)]
            )
        else:  # the new actor runs; stop the old one it replaced
            await self._command(
                status,
                deployment,
                host_id,
                "stop-old",
                attempts,
                now,
                _stop_commands(stale),
            )

    # --- writing status and sending commands -----------------------------------------------

    async def _running(
        self,
        status: Record | None,
        deployment: Deployment,
        host_id: str,
        actor: ActorSeen,
        now: float,
    ) -> None:
        if status is None or status.value.get("state") != "running":
            logger.info(
                "%s v%d runs on %s (%d instance(s))",
                deployment.name,
                deployment.version,
                host_id,
                actor.count,
            )
        await self.records.write_status(
            status,
            deployment,
            host_id,
            "running",
            now,
            lease=False,
            attempts=0,
            instances=actor.count,
            sha256=sha_of(actor.image_ref),
        )
        await self._release_slot(deployment, host_id)

    async def _failed(
        self,
        status: Record | None,
        deployment: Deployment,
        host_id: str,
        error: str,
        attempts: int,
        now: float,
    ) -> None:
        delay = min(RETRY_INITIAL_S * 2**attempts, self.retry_max_s)
        logger.warning(
            "%s on %s failed (attempt %d): %s; retrying in %.0f s",
            deployment.name,
            host_id,
            attempts + 1,
            error,
            delay,
        )
        await self.records.write_status(
            status,
            deployment,
            host_id,
            "failed",
            now,
            lease=False,
            error=error,
            attempts=attempts + 1,
            retry_at=now + delay,
        )
        await self._release_slot(deployment, host_id)
        asyncio.get_running_loop().call_later(delay, self.mark, host_id)

    async def _command(
        self,
        status: Record | None,
        deployment: Deployment,
        host_id: str,
        op: str,
        attempts: int,
        now: float,
        commands: list[tuple[str, dict[str, Any]]],
    ) -> None:
        """Take the lease, then send the commands; a refusal is a failure."""
        from agent.lattice.client import LatticeClient

        state = "updating" if op == "update" else "pending"
        await self.records.write_status(
            status,
            deployment,
            host_id,
            state,
            now,
            lease=True,
            reason=op,
            attempts=attempts,
            retry_at=now + self.lease_s,
        )
        await failpoint(f"before-{op}")
        client = LatticeClient(self._nats, self.lattice)
        for verb, body in commands:
            try:
                await client.command(host_id, verb, body)
            except LatticeEdgeError as exc:
                error = str(exc)
                if isinstance(exc, CommandRefused) and exc.op == "upd":
                    error = f"{UPD_REFUSED}: {exc.reason}"  # the next try stops and starts
                fresh = await self.records.status(deployment, host_id)
                await self._failed(fresh, deployment, host_id, error, attempts, now)
                return
        logger.info("%s v%d: %s on %s", deployment.name, deployment.version, op, host_id)
        asyncio.get_running_loop().call_later(self.lease_s + 0.5, self.mark, host_id)

    async def _release_slot(self, deployment: Deployment, host_id: str) -> None:
        if await self.records.release_slot(deployment, host_id):
            for waiting in self._waiting.pop(deployment.name, set()):
                self.mark(waiting)


def _stop_commands(stale: Iterable[ActorSeen]) -> list[tuple[str, dict[str, Any]]]:
    """``scale`` to zero for each actor the deployment no longer wants on a host."""
    return [
        ("scale", {"actor_id": a.actor_id, "actor_ref": a.image_ref, "count": 0}) for a in stale
    ]
