"""A simulated MCU: an SMP server with MCUboot's two-slot semantics. No I/O.

Requests are parsed and answers built with the ``smp`` package's models (the MCU side of
the protocol, written independently of the bridge's own codec, so the two check each
other). What it models:

* **Slots.** The primary slot runs; uploads go to the secondary. The upload state (offset,
  length, SHA-256 of the whole file) lives in "RAM": an upload that starts at offset 0 with
  the same SHA resumes where it stopped, as Zephyr's img_mgmt does, and a reboot forgets it.
* **MCUboot at boot.** A secondary image marked for test is checked (layout, hash and, with
  a key, its signature) and swapped in, running unconfirmed; an image that is still
  unconfirmed at the next boot is swapped back out (revert). Marked permanent, it is
  confirmed at once. An image that fails the check is not booted.
* **Stat groups** ``sim`` and ``smp`` whose counters change with time and traffic.
* **A never-confirming image** (fault): the application's confirm is accepted but does not
  stick, and its watchdog resets it ``watchdog_s`` after boot, so MCUboot reverts it.
"""

from __future__ import annotations

import enum
import hashlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ImageRejected, SMPFrameError
from firmware_bridge import codec
from firmware_bridge.codec import Group, Header, ImageCommand, Op, OsCommand, StatCommand
from firmware_bridge.image import inspect_image

__all__ = ["Effect", "SimulatedMCU", "Slot"]

EINVAL, ENOENT, EBADSTATE, ENOTSUP = 3, 5, 6, 8


class Effect(enum.Enum):
    """What the server must do after sending an answer."""

    NONE = "none"
    RESET = "reset"


@dataclass(slots=True)
class Slot:
    """An image in a slot."""

    version: str
    image_hash: bytes
    data: bytes | None = None  # None for the simulated factory image
    confirmed: bool = True


@dataclass(slots=True)
class _Upload:
    length: int
    sha: bytes | None
    received: bytearray = field(default_factory=bytearray)


class SimulatedMCU:
    """The device side of SMP; :meth:`handle` answers one request frame."""

    def __init__(
        self,
        *,
        version: str = "1.0.0",
        buf_size: int = 512,
        key: Any = None,
        never_confirm: bool = False,
        watchdog_s: float = 3.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.buf_size = buf_size
        self.key = key  # an imgtool public key: MCUboot's signature check
        self.never_confirm = never_confirm
        self.watchdog_s = watchdog_s
        self._clock = clock
        factory = hashlib.sha256(f"factory {version}".encode()).digest()
        self.primary = Slot(version, factory)
        self.secondary: Slot | None = None
        self.pending: str | None = None  # "test" or "permanent"
        self.upload: _Upload | None = None
        self.boots = 0
        self.booted_at = clock()
        self.requests: dict[tuple[int, int], int] = {}
        self.upload_offsets: list[int] = []  # the ``off`` of every upload request received

    # --- state --------------------------------------------------------------------------

    @property
    def upload_requests(self) -> int:
        return self.requests.get((Group.IMAGE, ImageCommand.UPLOAD), 0)

    @property
    def upload_fraction(self) -> float:
        if self.upload is None or not self.upload.length:
            return 0.0
        return len(self.upload.received) / self.upload.length

    def watchdog_due(self) -> bool:
        """True when a never-confirming test image's watchdog should reset the MCU."""
        return (
            self.never_confirm
            and not self.primary.confirmed
            and self._clock() - self.booted_at >= self.watchdog_s
        )

    def boot(self) -> None:
        """What MCUboot does at reset: revert an unconfirmed image, or swap a pending one."""
        self.boots += 1
        self.upload = None  # RAM
        if not self.primary.confirmed and self.secondary is not None:
            self.primary, self.secondary = self.secondary, self.primary  # revert
            self.primary.confirmed = True
        elif self.pending is not None and self.secondary is not None:
            if self._bootable(self.secondary):
                new = self.secondary
                new.confirmed = self.pending == "permanent"
                self.primary, self.secondary = new, self.primary
            else:
                self.secondary = None  # MCUboot erases an image it cannot validate
        self.pending = None
        self.booted_at = self._clock()

    def _bootable(self, slot: Slot) -> bool:
        if slot.data is None:
            return True
        try:
            info = inspect_image(slot.data)
        except ImageRejected:
            return False
        if info.image_hash != slot.image_hash:
            return False
        if self.key is None:
            return True
        from imgtool.image import Image, VerifyResult

        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "slot1.bin"
            path.write_bytes(slot.data)
            result, *_ = Image.verify(str(path), self.key)
        return bool(result == VerifyResult.OK)

    def stats(self) -> dict[str, dict[str, int]]:
        """The stat groups: values that change with time and traffic."""
        uptime = self._clock() - self.booted_at
        return {
            "sim": {
                "uptime_s": int(uptime),
                "ticks": int(uptime * 100),
                "temperature_mc": 21000 + int(1500 * math.sin(uptime / 5)),
                "boots": self.boots,
            },
            "smp": {
                "requests": sum(self.requests.values()),
                "uploads": self.upload_requests,
            },
        }

    # --- requests -----------------------------------------------------------------------

    def handle(self, frame: bytes) -> tuple[bytes | None, Effect]:
        """Answer one request frame; None for a frame that is not a request."""
        from pydantic import ValidationError

        try:
            message = codec.decode_message(frame)
        except SMPFrameError:
            return None, Effect.NONE
        header = message.header
        if header.op not in (Op.READ, Op.WRITE):
            return None, Effect.NONE
        key = (header.group, header.command)
        self.requests[key] = self.requests.get(key, 0) + 1
        try:
            answer, effect = self._dispatch(header, frame)
        except (ValidationError, ValueError, TypeError):
            return _error(header, EINVAL), Effect.NONE
        # The answer's op is the request's plus one, as Zephyr sends it (smp's
        # ImageStatesWriteResponse inherits the read response's op).
        first = (answer[0] & ~0b111) | (header.op + 1)
        return bytes([first]) + answer[1:], effect

    def _dispatch(self, header: Header, frame: bytes) -> tuple[bytes, Effect]:
        from smp import image_management as im
        from smp import os_management as osm
        from smp import statistics_management as sm

        seq, group, command, op = header.sequence, header.group, header.command, header.op
        if group == Group.OS:
            if command == OsCommand.ECHO and op == Op.WRITE:
                text = osm.EchoWriteRequest.loads(frame).d
                return bytes(osm.EchoWriteResponse(sequence=seq, r=text)), Effect.NONE
            if command == OsCommand.RESET and op == Op.WRITE:
                return bytes(osm.ResetWriteResponse(sequence=seq)), Effect.RESET
            if command == OsCommand.PARAMS and op == Op.READ:
                params = osm.MCUMgrParametersReadResponse(
                    sequence=seq, buf_size=self.buf_size, buf_count=4
                )
                return bytes(params), Effect.NONE
            if command == OsCommand.APP_INFO and op == Op.READ:
                text = f"Zephyr lattice-edge-sim {self.primary.version} simulated-mcu"
                return bytes(
                    osm.OSApplicationInfoReadResponse(sequence=seq, output=text)
                ), Effect.NONE
        if group == Group.IMAGE:
            if command == ImageCommand.UPLOAD and op == Op.WRITE:
                return self._upload(im.ImageUploadWriteRequest.loads(frame), seq), Effect.NONE
            if command == ImageCommand.STATE:
                if op == Op.WRITE:
                    request = im.ImageStatesWriteRequest.loads(frame)
                    rc = self._state_write(request.hash, request.confirm)
                    if rc:
                        return _error(header, rc), Effect.NONE
                    return bytes(self._states(seq, im.ImageStatesWriteResponse)), Effect.NONE
                return bytes(self._states(seq, im.ImageStatesReadResponse)), Effect.NONE
        if group == Group.STAT:
            groups = self.stats()
            if command == StatCommand.LIST and op == Op.READ:
                return bytes(
                    sm.ListOfGroupsResponse(sequence=seq, stat_list=tuple(groups))
                ), Effect.NONE
            if command == StatCommand.GROUP_DATA and op == Op.READ:
                name = sm.GroupDataRequest.loads(frame).name
                if name not in groups:
                    return _error(header, ENOENT), Effect.NONE
                answer = sm.GroupDataResponse(sequence=seq, name=name, fields=groups[name])
                return bytes(answer), Effect.NONE
        return _error(header, ENOTSUP), Effect.NONE

    def _upload(self, request: Any, seq: int) -> bytes:
        from smp import image_management as im

        self.upload_offsets.append(request.off)
        state = self.upload
        if request.off == 0:
            resumable = (
                state is not None and request.sha is not None and state.sha == request.sha
                and state.length == request.len and len(state.received) > 0
            )  # fmt: skip
            if resumable and state is not None:
                return bytes(im.ImageUploadWriteResponse(sequence=seq, off=len(state.received)))
            if request.len is None:
                return _error(Header(Op.WRITE, Group.IMAGE, ImageCommand.UPLOAD, seq), EINVAL)
            state = self.upload = _Upload(request.len, request.sha)
            self.secondary = None
            self.pending = None
        if state is None or request.off != len(state.received):
            off = len(state.received) if state is not None else 0
            return bytes(im.ImageUploadWriteResponse(sequence=seq, off=off))
        if len(state.received) >= state.length:
            return bytes(im.ImageUploadWriteResponse(sequence=seq, off=state.length))
        state.received += request.data[: state.length - len(state.received)]
        done = len(state.received) >= state.length
        if not done:
            return bytes(im.ImageUploadWriteResponse(sequence=seq, off=len(state.received)))
        data = bytes(state.received)
        match = hashlib.sha256(data).digest() == state.sha if state.sha else None
        try:
            info = inspect_image(data)
            self.secondary = Slot(info.version, info.image_hash, data, confirmed=False)
        except ImageRejected:
            self.secondary = Slot("0.0.0", hashlib.sha256(data).digest(), data, confirmed=False)
        # The upload state stays: a repeated last chunk (its answer lost) gets the final
        # offset again instead of looking like a new upload.
        return bytes(im.ImageUploadWriteResponse(sequence=seq, off=len(data), match=match))

    def _state_write(self, image_hash: bytes | None, confirm: bool) -> int:
        if image_hash is None or image_hash == self.primary.image_hash:
            if not confirm:
                return EINVAL
            if not (self.never_confirm and not self.primary.confirmed):
                self.primary.confirmed = True
            return 0
        if self.secondary is not None and image_hash == self.secondary.image_hash:
            self.pending = "permanent" if confirm else "test"
            return 0
        return ENOENT

    def _states(self, seq: int, response: Any) -> Any:
        from smp import image_management as im

        images = [
            im.ImageState(
                slot=0, version=self.primary.version, hash=self.primary.image_hash,
                active=True, confirmed=self.primary.confirmed, bootable=True,
            )
        ]  # fmt: skip
        if self.secondary is not None:
            images.append(
                im.ImageState(
                    slot=1, version=self.secondary.version, hash=self.secondary.image_hash,
                    pending=self.pending is not None, permanent=self.pending == "permanent",
                    bootable=True,
                )
            )  # fmt: skip
        return response(sequence=seq, images=images)


def _error(header: Header, rc: int) -> bytes:
    """An SMP v2 error answer from the request's group (the smp models leave the header open)."""
    answer = Header(Op(header.op + 1), header.group, header.command, header.sequence)
    return codec.encode_message(answer, {"err": {"group": header.group, "rc": rc}})
