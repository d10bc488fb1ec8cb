"""The fail-safe firmware update of one MCU, step by step (the image is already verified).

Steps (:class:`UpdateStep`): check what runs → upload to the secondary slot, following the
device's offset (an upload that was interrupted resumes where the device says it is; a
link lost mid-way is waited for and the upload continues) → mark the image for test →
reset → wait for the MCU to come back → check that it booted the new image → health window
(echo and stats must keep answering) → confirm, and check that the confirmation stuck.

Every failure after the reset ends in one of the outcomes of
:class:`~agent.errors.UpdateFailed`: ``rolled_back`` when the MCU runs the old image again
(MCUboot reverted it: the new one failed its boot check, crashed, or never confirmed — in
that last case the updater resets the MCU itself so that MCUboot reverts), ``lost`` when
it does not come back, ``failed`` otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import DeviceError, DeviceUnavailable, UpdateFailed
from firmware_bridge.codec import ImageSlot, UploadReply
from firmware_bridge.device import Device
from firmware_bridge.image import ImageInfo
from firmware_bridge.session import SMPSession

__all__ = ["UpdateResult", "UpdateStep", "update_firmware"]

logger = logging.getLogger("lattice_edge.firmware.ota")

FIRST_CHUNK_TIMEOUT_S = 5.0  # the first write may erase the slot first
MAX_STALLS = 8
HEALTH_PERIOD_S = 0.5


class UpdateStep(enum.Enum):
    """Where an update is."""

    CHECKING = "checking"
    UPLOADING = "uploading"
    TESTING = "testing"
    RESETTING = "resetting"
    RETURNING = "returning"
    BOOT_CHECK = "boot_check"
    HEALTH = "health"
    CONFIRMING = "confirming"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """A finished update."""

    version: str
    image_hash: str
    confirmed: bool
    resumed_from: int
    uploaded_bytes: int
    seconds: float
    message: str


Progress = Callable[[UpdateStep, int, int], None]


async def update_firmware(
    device: Device,
    image: ImageInfo,
    data: bytes,
    *,
    confirm: bool,
    health_window_s: float,
    return_timeout_s: float,
    progress: Progress,
) -> UpdateResult:
    """Run the update; raise :class:`UpdateFailed` with the outcome and reason."""
    return await _Update(device, image, data, confirm, health_window_s, return_timeout_s,
                         progress).run()  # fmt: skip


class _Update:
    def __init__(
        self, device: Device, image: ImageInfo, data: bytes, confirm: bool,
        health_window_s: float, return_timeout_s: float, progress: Progress,
    ) -> None:  # fmt: skip
        self.device = device
        self.image = image
        self.data = data
        self.confirm = confirm
        self.health_window_s = health_window_s
        self.return_timeout_s = return_timeout_s
        self.progress = progress
        self.step = UpdateStep.CHECKING
        self.old: ImageSlot | None = None
        self.resumed_from = 0
        self.sent = 0
        self.started = time.monotonic()

    def _to(self, step: UpdateStep, offset: int = 0) -> None:
        self.step = step
        self.progress(step, offset, self.image.size)

    def _fail(self, outcome: str, reason: str) -> UpdateFailed:
        return UpdateFailed(reason, outcome=outcome, step=self.step.value)

    async def run(self) -> UpdateResult:
        self._to(UpdateStep.CHECKING)
        states = await self._states()
        active = _active(states)
        self.old = active
        if active is not None and active.hash == self.image.image_hash:
            if active.confirmed or not self.confirm:
                return self._result(active.confirmed, f"already running {self.image.version}")
            await self._confirm()
            return self._result(True, f"confirmed {self.image.version}, which was running")
        await self._upload()
        self._to(UpdateStep.TESTING, self.image.size)
        try:
            await self.device.call(lambda s: s.mark_for_test(self.image.image_hash))
        except (DeviceError, DeviceUnavailable) as exc:
            raise self._fail("failed", f"the MCU did not take the image for test: {exc}") from exc
        self._to(UpdateStep.RESETTING, self.image.size)
        await self.device.call(lambda s: s.reset())
        await asyncio.sleep(0.1)
        await self._returned("after its reset")
        self._to(UpdateStep.BOOT_CHECK, self.image.size)
        await self._booted_new()
        self._to(UpdateStep.HEALTH, self.image.size)
        await self._health()
        if not self.confirm:
            return self._result(
                False,
                f"running {self.image.version} unconfirmed; it reverts at the next reset "
                "unless confirmed",
            )
        await self._confirm()
        return self._result(True, f"running {self.image.version}, confirmed")

    def _result(self, confirmed: bool, message: str) -> UpdateResult:
        self._to(UpdateStep.DONE, self.image.size)
        return UpdateResult(
            version=self.image.version,
            image_hash=self.image.image_hash.hex(),
            confirmed=confirmed,
            resumed_from=self.resumed_from,
            uploaded_bytes=self.sent,
            seconds=round(time.monotonic() - self.started, 3),
            message=message,
        )

    async def _states(self) -> tuple[ImageSlot, ...]:
        try:
            return await self.device.call(lambda s: s.image_states())
        except (DeviceError, DeviceUnavailable) as exc:
            raise self._fail("failed", f"cannot read the MCU's image slots: {exc}") from exc

    # --- upload -------------------------------------------------------------------------

    async def _upload(self) -> None:
        image, device = self.image, self.device
        size = image.size
        chunk = device.chunk_size(size, image.file_sha256)
        self._to(UpdateStep.UPLOADING, 0)
        offset, negotiate, stalls, last_report = 0, True, 0, 0
        while True:
            negotiated = negotiate
            try:
                if negotiate:
                    reply = await self._first_chunk(chunk)
                    negotiate = False
                else:
                    reply = await self._chunk(offset, chunk)
            except DeviceUnavailable as exc:
                await self._lost_during_upload(offset, exc)
                negotiate = True
                continue
            except DeviceError as exc:
                raise self._fail(
                    "failed", f"the MCU refused the upload at {offset}: {exc}"
                ) from exc
            if reply.off > size:
                raise self._fail("failed", f"the MCU asked for offset {reply.off} of {size}")
            if reply.off == size:
                if reply.match is False:
                    raise self._fail("failed", "the MCU's SHA-256 of the upload does not match")
                break
            if not negotiated and reply.off <= offset:
                stalls += 1
                if stalls > MAX_STALLS:
                    raise self._fail("failed", f"the upload is stuck at offset {reply.off}")
            else:
                stalls = 0
            offset = reply.off
            if offset - last_report >= max(size // 100, 1):
                last_report = offset
                self.progress(UpdateStep.UPLOADING, offset, size)
        states = await self._states()
        if not any(s.hash == image.image_hash and not s.active for s in states):
            raise self._fail("failed", "the upload finished but no slot holds the new image")
        self.progress(UpdateStep.UPLOADING, size, size)

    async def _first_chunk(self, chunk: int) -> UploadReply:
        """Offset 0 with the file's SHA: a device holding part of this upload answers with
        its offset instead of starting over (that is the resume)."""
        first = self.data[:chunk]
        timeout = max(FIRST_CHUNK_TIMEOUT_S, self.device.settings.timeout_s)

        async def send(session: SMPSession) -> UploadReply:
            return await session.upload(
                0, first, total=self.image.size, sha=self.image.file_sha256, timeout_s=timeout
            )

        reply = await self.device.call(send)
        self.sent += len(first)
        if reply.off > len(first) and not self.resumed_from:
            self.resumed_from = reply.off
        return reply

    async def _chunk(self, offset: int, chunk: int) -> UploadReply:
        piece = self.data[offset : offset + chunk]

        async def send(session: SMPSession) -> UploadReply:
            return await session.upload(offset, piece)

        reply = await self.device.call(send)
        self.sent += len(piece)
        return reply

    async def _lost_during_upload(self, offset: int, exc: DeviceUnavailable) -> None:
        percent = offset * 100 // max(self.image.size, 1)
        logger.warning("firmware device %s: lost during upload at %d %%: %s",
                       self.device.name, percent, exc)  # fmt: skip
        if not await self.device.wait_online(self.return_timeout_s):
            raise self._fail(
                "failed",
                f"the MCU went away during the upload at {percent} % and did not come back "
                f"within {self.return_timeout_s:g} s; run the update again to resume",
            ) from exc

    # --- after the reset -----------------------------------------------------------------

    async def _returned(self, when: str) -> None:
        self._to(UpdateStep.RETURNING, self.image.size)
        if not await self.device.wait_online(self.return_timeout_s):
            raise self._fail(
                "lost",
                f"the MCU did not come back within {self.return_timeout_s:g} s {when}",
            )

    async def _booted_new(self) -> None:
        active = _active(await self._states())
        if active is not None and active.hash == self.image.image_hash:
            return
        raise self._reverted("the MCU came back on its old image: MCUboot did not boot the "
                             "new one (its check at boot failed)")  # fmt: skip

    def _reverted(self, reason: str) -> UpdateFailed:
        old = self.old.version if self.old is not None else "the old image"
        return self._fail("rolled_back", f"{reason}; it runs {old} again")

    async def _health(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.health_window_s
        while True:
            try:
                await self.device.call(lambda s: s.echo("health"))
                await self.device.call(lambda s: s.stat_groups())
            except DeviceError:
                pass  # a device without stat groups is not unhealthy
            except DeviceUnavailable as exc:
                await self._after_crash(f"the new image stopped answering during its health "
                                        f"window ({exc})")  # fmt: skip
            if loop.time() >= end:
                return
            await asyncio.sleep(min(HEALTH_PERIOD_S, max(end - loop.time(), 0)))

    async def _after_crash(self, reason: str) -> None:
        await self._returned("after it stopped answering")
        active = _active(await self._states())
        if active is None or active.hash != self.image.image_hash:
            raise self._reverted(f"{reason}, and MCUboot reverted it")
        raise self._fail("failed", f"{reason}; it runs the new image unconfirmed")

    async def _confirm(self) -> None:
        self._to(UpdateStep.CONFIRMING, self.image.size)
        for _attempt in range(2):
            try:
                await self.device.call(lambda s: s.confirm())
                active = _active(await self.device.call(lambda s: s.image_states()))
            except DeviceUnavailable as exc:
                await self._after_crash(f"the new image went away while confirming ({exc})")
                continue
            except DeviceError as exc:
                raise self._fail("failed", f"the MCU refused to confirm: {exc}") from exc
            if active is not None and active.hash == self.image.image_hash and active.confirmed:
                return
            await asyncio.sleep(HEALTH_PERIOD_S)
        # It never confirmed: reset it so MCUboot reverts to the known-good image now.
        self._to(UpdateStep.RESETTING, self.image.size)
        await self.device.call(lambda s: s.reset())
        await asyncio.sleep(0.1)
        await self._returned("after the reset that reverts an unconfirmed image")
        active = _active(await self._states())
        if active is not None and active.hash != self.image.image_hash:
            raise self._reverted("the new image never confirmed, so MCUboot reverted it")
        raise self._fail("failed", "the new image never confirmed and MCUboot did not revert it")


def _active(states: tuple[ImageSlot, ...]) -> ImageSlot | None:
    for slot in states:
        if slot.image == 0 and slot.active:
            return slot
    return next((s for s in states if s.image == 0 and s.slot == 0), None)
