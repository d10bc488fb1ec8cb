"""The firmware bridge as the agent runs it: devices, telemetry, updates, the service.

:func:`start_bridge` is what the host calls (only when ``[[firmware.devices]]`` is
configured): it makes one :class:`~firmware_bridge.device.Device` per entry, runs each in
the host's task group, and serves the ``nats.micro`` endpoints on the host's own NATS
connection. Updates run in the same task group; their CloudEvents go through the control
server's ``emit`` when the host has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import FirmwareSettings
from agent.errors import (
    ActorRefError,
    ControlRequestError,
    DeviceBusy,
    ImageRejected,
    UpdateFailed,
)
from agent.lattice import subjects
from agent.lattice.events import cloud_event
from agent.lattice.refs import FetchPolicy, ModuleCache, fetch_module, parse_ref
from firmware_bridge import events
from firmware_bridge.codec import StatGroup
from firmware_bridge.device import Device
from firmware_bridge.image import ImageInfo, TrustedKey, load_trusted_keys, verify_image
from firmware_bridge.ota import UpdateResult, UpdateStep, update_firmware

__all__ = ["FirmwareBridge", "start_bridge"]

logger = logging.getLogger("lattice_edge.firmware")

PROGRESS_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 5.0
Emit = Callable[[str, Mapping[str, Any]], None]


class FirmwareBridge:
    """The MCUs of one host and what it serves and publishes about them."""

    def __init__(
        self,
        settings: FirmwareSettings,
        *,
        nats_client: Any,
        host_id: str,
        lattice: str,
        module_cache: ModuleCache,
        telemetry_period_s: float,
        tasks: asyncio.TaskGroup,
        emit: Emit | None = None,
        config_source: Any = None,
    ) -> None:
        self.settings = settings
        self.nats = nats_client
        self.host_id = host_id
        self.lattice = lattice
        self.cache = module_cache
        self.telemetry_period_s = settings.telemetry_period_s or telemetry_period_s
        self._tasks = tasks
        self._emit_event = emit
        self._config_source = config_source
        self._keys: list[TrustedKey] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._service: Any = None
        self.devices = {
            d.name: Device(d, telemetry_period_s=self.telemetry_period_s, publish=self._publish)
            for d in settings.devices
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start one task per device and serve the endpoints."""
        from firmware_bridge.service import start_service

        for device in self.devices.values():
            self._track(self._tasks.create_task(device.run(), name=f"firmware {device.name}"))
        self._service = await start_service(self)
        logger.info("firmware bridge: %d device(s): %s", len(self.devices), ", ".join(self.devices))

    async def stop(self) -> None:
        """Stop serving, cancel updates and device tasks, close every link."""
        if self._service is not None:
            with contextlib.suppress(Exception):  # the connection may be closing already
                await self._service.stop()
            self._service = None
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=STOP_TIMEOUT_S)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # --- telemetry and events --------------------------------------------------------------

    async def _publish(self, device: Device, stats: StatGroup) -> None:
        subject = events.telemetry_subject(self.host_id, device.name, stats.name)
        body = json.dumps(events.telemetry(device.name, stats.name, stats.fields, time.time()))
        try:
            await self.nats.publish(subject, body.encode())
        except Exception as exc:  # nats-py: disconnected or closing; telemetry is best effort
            logger.debug("telemetry %s: %s", subject, exc)

    def emit(self, name: str, data: Mapping[str, Any]) -> None:
        """A CloudEvent on ``wasmbus.evt.{lattice}``: the control server's, or our own."""
        if self._emit_event is not None:
            self._emit_event(name, data)
            return
        body = json.dumps(cloud_event(name, self.host_id, data)).encode()
        for subject in (subjects.events(self.lattice), subjects.event(self.lattice, name)):
            self._track(self._tasks.create_task(self._send(subject, body)))

    async def _send(self, subject: str, body: bytes) -> None:
        try:
            await self.nats.publish(subject, body)
        except Exception as exc:  # a closed connection during shutdown is not an error
            logger.debug("publishing %s: %s", subject, exc)

    # --- updates -----------------------------------------------------------------------------

    async def begin_update(self, device: Device, image_ref: str, confirm: bool) -> dict[str, Any]:
        """Fetch and verify the image, then start the update; answer once it has started."""
        if device.updating:
            raise DeviceBusy(f"an update is already running on {device.name}")
        update_id = uuid.uuid4().hex[:16]
        device.updating = True
        try:
            data, path = await self._fetch(image_ref)
            if self._keys is None:
                self._keys = await asyncio.to_thread(
                    load_trusted_keys, self.settings.trusted_keys, self._config_source
                )
            info, key_path = await asyncio.to_thread(verify_image, path, data, self._keys)
        except ImageRejected as exc:
            device.updating = False
            self._finished(device, update_id, "refused", str(exc), "verify")
            raise
        except BaseException:
            device.updating = False
            raise
        self.emit(
            "firmware_update_started",
            events.update_started(device=device.name, update_id=update_id,
                                  image=info.to_json(), confirm=confirm, key=key_path.name),
        )  # fmt: skip
        task = self._tasks.create_task(
            self._run_update(device, update_id, info, data, confirm),
            name=f"firmware update {device.name}",
        )
        self._track(task)
        return {"accepted": True, "update_id": update_id, "device": device.name,
                "image": info.to_json()}  # fmt: skip

    async def _fetch(self, text: str) -> tuple[bytes, Any]:
        ref = parse_ref(text)
        if ref.scheme == "file":
            raise ControlRequestError(
                "file references are not accepted over the lattice: use nats-os://BUCKET/OBJECT "
                "or sha256:<digest> of an image in the module cache"
            )
        if ref.scheme == "sha256":
            data = await asyncio.to_thread(self.cache.get, ref.location)
            if data is None:
                raise ActorRefError(f"{ref} is not in the local module cache")
            digest = ref.location
        else:
            data = await fetch_module(ref, self.nats, FetchPolicy(max_bytes=self.cache.max_bytes))
            digest = await asyncio.to_thread(self.cache.put, data)
        return data, self.cache.directory / digest

    async def _run_update(
        self, device: Device, update_id: str, info: ImageInfo, data: bytes, confirm: bool
    ) -> None:
        reporter = _ProgressReporter(self, device.name, update_id)
        step = UpdateStep.CHECKING.value
        try:
            result: UpdateResult = await update_firmware(
                device, info, data, confirm=confirm,
                health_window_s=self.settings.health_window_s,
                return_timeout_s=self.settings.return_timeout_s, progress=reporter,
            )  # fmt: skip
        except UpdateFailed as exc:
            self._finished(device, update_id, exc.outcome, str(exc), exc.step)
        except asyncio.CancelledError:
            self._finished(device, update_id, "failed", "the agent stopped during the update",
                           reporter.step)  # fmt: skip
            raise
        except Exception as exc:  # the one error policy: report it, keep the host running
            logger.exception("firmware update of %s failed unexpectedly", device.name)
            reason = f"unexpected error ({type(exc).__name__}); see the agent's log"
            self._finished(device, update_id, "failed", reason, reporter.step or step)
        else:
            device.last_update = {"update_id": update_id, "outcome": "succeeded",
                                  "message": result.message}  # fmt: skip
            logger.info("firmware device %s: %s", device.name, result.message)
            self.emit(
                "firmware_update_succeeded",
                events.update_succeeded(
                    device=device.name, update_id=update_id, version=result.version,
                    image_hash=result.image_hash, confirmed=result.confirmed,
                    resumed_from=result.resumed_from, seconds=result.seconds,
                    message=result.message,
                ),
            )  # fmt: skip
        finally:
            device.updating = False

    def _finished(
        self, device: Device, update_id: str, outcome: str, reason: str, step: str
    ) -> None:
        device.last_update = {"update_id": update_id, "outcome": outcome, "message": reason}
        logger.warning("firmware update of %s %s: %s", device.name, outcome, reason)
        self.emit(
            "firmware_update_failed",
            events.update_failed(device=device.name, update_id=update_id, outcome=outcome,
                                 reason=reason, step=step),
        )  # fmt: skip


class _ProgressReporter:
    """``firmware_update_progress`` events: every step change, upload at most 1/s."""

    def __init__(self, bridge: FirmwareBridge, device: str, update_id: str) -> None:
        self.bridge = bridge
        self.device = device
        self.update_id = update_id
        self.step = ""
        self._last = 0.0

    def __call__(self, step: UpdateStep, offset: int, size: int) -> None:
        now = time.monotonic()
        changed = step.value != self.step
        if not changed and now - self._last < PROGRESS_INTERVAL_S and offset < size:
            return
        self.step, self._last = step.value, now
        self.bridge.emit(
            "firmware_update_progress",
            events.update_progress(device=self.device, update_id=self.update_id,
                                   step=step.value, offset=offset, size=size),
        )  # fmt: skip


async def start_bridge(host: Any, tasks: asyncio.TaskGroup) -> FirmwareBridge:
    """Start the bridge for a running :class:`agent.host.Host` (its NATS, cache, events)."""
    config = host.config
    control = host.control
    bridge = FirmwareBridge(
        config.firmware,
        nats_client=host.nats,
        host_id=host.keys.host_id,
        lattice=config.host.lattice,
        module_cache=ModuleCache(config.host.data_dir / "modules"),
        telemetry_period_s=host.board.budgets.telemetry_interval_s,
        tasks=tasks,
        emit=control.emit if control is not None else None,
        config_source=config.source,
    )
    await bridge.start()
    return bridge
