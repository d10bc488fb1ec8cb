"""One MCU's SMP conversation: a request at a time, matched by sequence number, retransmitted.

MCUmgr serves one request at a time on a small buffer, so the session sends one and waits
for the answer whose op, group, command and sequence number match; anything else (a late
answer to an earlier attempt, a frame that does not decode) is counted and dropped. When an
attempt times out the *same* frame, with the same sequence number, is sent again: a device
that did answer has done the work once, and its answer to the retry says so (an upload
answer carries the device's offset, so a repeated chunk is not written twice). mcumgr's own
Python client, smpclient, has no retransmit; this is why the bridge has its own session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import DeviceError, DeviceUnavailable, SMPFrameError
from firmware_bridge import codec
from firmware_bridge.codec import Group, Header, ImageCommand, Op, OsCommand, StatCommand
from firmware_bridge.link import Link

__all__ = ["SMPSession", "SessionStats"]

logger = logging.getLogger("lattice_edge.firmware.session")

DEFAULT_ATTEMPTS = 4


@dataclass(slots=True)
class SessionStats:
    requests: int = 0
    retransmits: int = 0
    stale: int = 0  # well-formed frames that answered nothing outstanding
    undecodable: int = 0
    timeouts: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "requests": self.requests, "retransmits": self.retransmits, "stale": self.stale,
            "undecodable": self.undecodable, "timeouts": self.timeouts,
        }  # fmt: skip


class SMPSession:
    """Requests to one MCU over a :class:`~firmware_bridge.link.Link`."""

    def __init__(self, link: Link, *, timeout_s: float, attempts: int = DEFAULT_ATTEMPTS):
        self.link = link
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.stats = SessionStats()
        self._sequence = 0
        self._lock = asyncio.Lock()

    async def request(
        self,
        op: Op,
        group: int,
        command: int,
        body: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        attempts: int | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the body of its answer.

        Raises :class:`DeviceUnavailable` after ``attempts`` unanswered tries or when the
        link is lost, and :class:`DeviceError` when the device answers with an error code.
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        tries = self.attempts if attempts is None else attempts
        async with self._lock:
            self._sequence = (self._sequence + 1) & 0xFF
            sequence = self._sequence
            frame = codec.encode_message(Header(op, group, command, sequence), body)
            self.stats.requests += 1
            self.link.discard_pending()
            for attempt in range(tries):
                if attempt:
                    self.stats.retransmits += 1
                await self.link.send(frame)
                answer = await self._answer(op, group, command, sequence, timeout)
                if answer is not None:
                    error = codec.error_of(answer)
                    if error is not None:
                        raise error
                    return answer.body
            self.stats.timeouts += 1
            raise DeviceUnavailable(
                f"{self.link.description}: no answer to group {group} command {command} "
                f"after {tries} tries of {timeout:g} s"
            )

    async def _answer(
        self, op: Op, group: int, command: int, sequence: int, timeout: float
    ) -> codec.Message | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            frame = await self.link.receive(left)
            if frame is None:
                return None
            try:
                message = codec.decode_message(frame)
            except SMPFrameError as exc:
                self.stats.undecodable += 1
                logger.debug("%s: dropped a frame: %s", self.link.description, exc)
                continue
            header = message.header
            if (
                header.sequence == sequence
                and header.group == group
                and header.command == command
                and header.op == op + 1
            ):
                return message
            self.stats.stale += 1
        return None

    # --- the operations the bridge uses ------------------------------------------------

    async def echo(self, text: str) -> str:
        body = await self.request(Op.WRITE, Group.OS, OsCommand.ECHO, {"d": text})
        return codec.read_echo(body)

    async def reset(self) -> None:
        """Ask the MCU to reset; an answer lost to the reset itself is not an error."""
        try:
            await self.request(Op.WRITE, Group.OS, OsCommand.RESET, {}, attempts=1)
        except DeviceUnavailable:
            logger.debug("%s: no answer to reset (it may have reset first)", self.link.description)

    async def params(self) -> codec.Params | None:
        """MCUmgr buffer parameters, or None when the device does not report them."""
        try:
            body = await self.request(Op.READ, Group.OS, OsCommand.PARAMS, {})
        except DeviceError as exc:
            if exc.rc == codec.ENOTSUP or exc.group is not None:
                return None
            raise
        return codec.read_params(body)

    async def app_info(self) -> codec.AppInfo | None:
        try:
            body = await self.request(Op.READ, Group.OS, OsCommand.APP_INFO, {"format": "a"})
        except DeviceError:
            return None
        return codec.read_app_info(body)

    async def image_states(self) -> tuple[codec.ImageSlot, ...]:
        body = await self.request(Op.READ, Group.IMAGE, ImageCommand.STATE, {})
        return codec.read_image_states(body)

    async def mark_for_test(self, image_hash: bytes) -> tuple[codec.ImageSlot, ...]:
        body = await self.request(
            Op.WRITE, Group.IMAGE, ImageCommand.STATE, {"hash": image_hash, "confirm": False}
        )
        return codec.read_image_states(body)

    async def confirm(self) -> tuple[codec.ImageSlot, ...]:
        """Confirm the running image (no hash: "the one I booted")."""
        body = await self.request(Op.WRITE, Group.IMAGE, ImageCommand.STATE, {"confirm": True})
        return codec.read_image_states(body)

    async def upload(
        self, offset: int, data: bytes, *, total: int | None = None, sha: bytes | None = None,
        timeout_s: float | None = None,
    ) -> codec.UploadReply:  # fmt: skip
        body: dict[str, Any] = {"image": 0, "off": offset, "data": data}
        if total is not None:
            body["len"] = total
        if sha is not None:
            body["sha"] = sha
        answer = await self.request(
            Op.WRITE, Group.IMAGE, ImageCommand.UPLOAD, body, timeout_s=timeout_s
        )
        return codec.read_upload(answer)

    async def stat_groups(self) -> tuple[str, ...]:
        body = await self.request(Op.READ, Group.STAT, StatCommand.LIST, {})
        return codec.read_stat_list(body)

    async def stat_group(self, name: str) -> codec.StatGroup:
        body = await self.request(Op.READ, Group.STAT, StatCommand.GROUP_DATA, {"name": name})
        return codec.read_stat_group(body)
