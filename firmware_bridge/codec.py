"""SMP messages: the 8-byte header, CBOR bodies, and the responses the bridge reads. Pure.

Header (big-endian)::

    byte 0      res:3 | version:2 | op:3      op: 0 read, 1 read rsp, 2 write, 3 write rsp
    byte 1      flags
    bytes 2-3   length of the CBOR body
    bytes 4-5   group (0 os, 1 image, 2 stat, …; 64+ user groups)
    byte 6      sequence number
    byte 7      command id

The request and response shapes follow the ``smp`` package's models (which the simulator
uses); the bridge has its own small readers so that it needs only ``cbor2`` at run time,
not pydantic (see ``docs/firmware.md``). Every reader checks types and bounds and raises
:class:`~agent.errors.SMPFrameError` naming the field; an SMP error answer becomes a
:class:`~agent.errors.DeviceError` carrying its ``rc``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.errors import DeviceError, SMPFrameError
from firmware_bridge.framing import MAX_FRAME

__all__ = [
    "HEADER_SIZE",
    "AppInfo",
    "Group",
    "Header",
    "ImageSlot",
    "Message",
    "Op",
    "Params",
    "StatGroup",
    "UploadReply",
    "decode_message",
    "encode_message",
    "error_of",
    "rc_name",
    "read_app_info",
    "read_echo",
    "read_image_states",
    "read_params",
    "read_stat_group",
    "read_stat_list",
    "read_upload",
    "upload_overhead",
]

HEADER_SIZE = 8
_HEADER = struct.Struct("!BBHHBB")
SMP_V2 = 1


class Op(enum.IntEnum):
    """The header's operation."""

    READ = 0
    READ_RSP = 1
    WRITE = 2
    WRITE_RSP = 3


class Group(enum.IntEnum):
    """Management groups the bridge uses, with their command ids."""

    OS = 0
    IMAGE = 1
    STAT = 2


class OsCommand(enum.IntEnum):
    ECHO = 0
    RESET = 5
    PARAMS = 6
    APP_INFO = 7


class ImageCommand(enum.IntEnum):
    STATE = 0
    UPLOAD = 1


class StatCommand(enum.IntEnum):
    GROUP_DATA = 0
    LIST = 1


@dataclass(frozen=True, slots=True)
class Header:
    """An SMP header."""

    op: Op
    group: int
    command: int
    sequence: int
    length: int = 0
    version: int = SMP_V2
    flags: int = 0

    def encode(self) -> bytes:
        first = (self.version & 0b11) << 3 | (self.op & 0b111)
        return _HEADER.pack(
            first, self.flags, self.length, self.group, self.sequence & 0xFF, self.command
        )


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded SMP frame: its header and its CBOR map."""

    header: Header
    body: dict[str, Any]


def encode_message(header: Header, body: Mapping[str, Any]) -> bytes:
    """Header plus canonical CBOR of ``body``; the header's length is filled in."""
    payload = cbor2.dumps(dict(body), canonical=True)
    if HEADER_SIZE + len(payload) > MAX_FRAME:
        raise SMPFrameError(f"an SMP message of {len(payload)} bytes does not fit a frame")
    fixed = Header(
        header.op, header.group, header.command, header.sequence, len(payload),
        header.version, header.flags,
    )  # fmt: skip
    return fixed.encode() + payload


def decode_message(frame: bytes) -> Message:
    """Parse one frame. The header's length must match; the body must be a CBOR map."""
    if len(frame) < HEADER_SIZE:
        raise SMPFrameError(f"an SMP frame needs {HEADER_SIZE} header bytes, got {len(frame)}")
    if len(frame) > MAX_FRAME:
        raise SMPFrameError(f"an SMP frame of {len(frame)} bytes is over the {MAX_FRAME} limit")
    first, flags, length, group, sequence, command = _HEADER.unpack_from(frame)
    header = Header(
        Op(first & 0b111) if first & 0b111 <= 3 else _bad_op(first & 0b111),
        group, command, sequence, length, (first >> 3) & 0b11, flags,
    )  # fmt: skip
    if len(frame) - HEADER_SIZE != length:
        raise SMPFrameError(
            f"the SMP header says {length} body bytes, the frame carries {len(frame) - 8}"
        )
    if length == 0:
        return Message(header, {})
    try:
        body = cbor2.loads(frame[HEADER_SIZE:])
    except (ValueError, TypeError, OverflowError, LookupError, RecursionError, EOFError) as exc:
        raise SMPFrameError(f"the SMP body is not valid CBOR: {type(exc).__name__}") from exc
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise SMPFrameError("the SMP body is not a CBOR map with text keys")
    return Message(header, body)


def _bad_op(op: int) -> Op:
    raise SMPFrameError(f"SMP op {op} is not read, write or a response")


# --- errors ------------------------------------------------------------------------------

_MGMT_ERR = {
    1: "EUNKNOWN", 2: "ENOMEM", 3: "EINVAL", 4: "ETIMEOUT", 5: "ENOENT", 6: "EBADSTATE",
    7: "EMSGSIZE", 8: "ENOTSUP", 9: "ECORRUPT", 10: "EBUSY", 11: "EACCESSDENIED",
    12: "UNSUPPORTED_TOO_OLD", 13: "UNSUPPORTED_TOO_NEW",
}  # fmt: skip
ENOTSUP = 8


def rc_name(rc: int, group: int | None) -> str:
    """A readable name for an SMP result code (v1 codes; v2 codes are per group)."""
    if group is None:
        return _MGMT_ERR.get(rc, f"rc {rc}")
    return f"group {group} rc {rc}"


def error_of(message: Message) -> DeviceError | None:
    """The error an answer carries (SMP v2 ``err`` map or a non-zero v1 ``rc``), or None."""
    body = message.body
    err = body.get("err")
    if err is not None:
        if not isinstance(err, dict):
            return DeviceError("the device answered with a malformed error", rc=1)
        rc, group = err.get("rc"), err.get("group")
        if not isinstance(rc, int) or not isinstance(group, int):
            return DeviceError("the device answered with a malformed error", rc=1)
        return DeviceError(f"the device refused: {rc_name(rc, group)}", rc=rc, group=group)
    code = body.get("rc")
    if code is None or code == 0:
        return None
    if not _is_int(code):
        return DeviceError("the device answered with a malformed rc", rc=1)
    reason = body.get("rsn")
    detail = f" ({reason[:128]!r})" if isinstance(reason, str) else ""
    return DeviceError(f"the device refused: {rc_name(code, None)}{detail}", rc=int(code))


# --- readers of the answers the bridge uses ------------------------------------------


@dataclass(frozen=True, slots=True)
class Params:
    """``os`` MCUmgr parameters: the device's buffer size and count."""

    buf_size: int
    buf_count: int


@dataclass(frozen=True, slots=True)
class AppInfo:
    """``os`` application info (``uname``-like text)."""

    output: str


@dataclass(frozen=True, slots=True)
class ImageSlot:
    """One entry of the ``img`` state list."""

    image: int
    slot: int
    version: str
    hash: bytes | None
    bootable: bool
    pending: bool
    confirmed: bool
    active: bool
    permanent: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "slot": self.slot, "version": self.version,
            "hash": self.hash.hex() if self.hash is not None else None,
            "bootable": self.bootable, "pending": self.pending, "confirmed": self.confirmed,
            "active": self.active, "permanent": self.permanent,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class UploadReply:
    """An ``img`` upload answer: where the device wants the next chunk to start."""

    off: int
    match: bool | None


@dataclass(frozen=True, slots=True)
class StatGroup:
    """A ``stat`` group's counters."""

    name: str
    fields: dict[str, int]


def read_echo(body: Mapping[str, Any]) -> str:
    return _text(body.get("r"), "r", 1024)


def read_params(body: Mapping[str, Any]) -> Params:
    return Params(
        _count(body.get("buf_size"), "buf_size"), _count(body.get("buf_count"), "buf_count")
    )


def read_app_info(body: Mapping[str, Any]) -> AppInfo:
    return AppInfo(_text(body.get("output"), "output", 1024))


def read_image_states(body: Mapping[str, Any]) -> tuple[ImageSlot, ...]:
    images = body.get("images")
    if not isinstance(images, list) or len(images) > 16:
        raise SMPFrameError("'images' must be a list of at most 16 slots")
    slots = []
    for entry in images:
        if not isinstance(entry, dict):
            raise SMPFrameError("each entry of 'images' must be a map")
        digest = entry.get("hash")
        if digest is not None and (not isinstance(digest, bytes) or len(digest) > 64):
            raise SMPFrameError("'images[].hash' must be at most 64 bytes")
        slots.append(
            ImageSlot(
                image=_count(entry.get("image", 0), "images[].image"),
                slot=_count(entry.get("slot"), "images[].slot"),
                version=_text(entry.get("version"), "images[].version", 64),
                hash=digest,
                bootable=_flag(entry, "bootable"),
                pending=_flag(entry, "pending"),
                confirmed=_flag(entry, "confirmed"),
                active=_flag(entry, "active"),
                permanent=_flag(entry, "permanent"),
            )
        )
    return tuple(slots)


def read_upload(body: Mapping[str, Any]) -> UploadReply:
    match = body.get("match")
    if match is not None and not isinstance(match, bool):
        raise SMPFrameError("'match' must be true or false")
    return UploadReply(_count(body.get("off"), "off"), match)


def read_stat_list(body: Mapping[str, Any]) -> tuple[str, ...]:
    names = body.get("stat_list")
    if not isinstance(names, list) or len(names) > 64:
        raise SMPFrameError("'stat_list' must be a list of at most 64 names")
    return tuple(_text(name, "stat_list[]", 64) for name in names)


def read_stat_group(body: Mapping[str, Any]) -> StatGroup:
    name = _text(body.get("name"), "name", 64)
    fields = body.get("fields")
    if not isinstance(fields, dict) or len(fields) > 256:
        raise SMPFrameError("'fields' must be a map of at most 256 counters")
    counters: dict[str, int] = {}
    for key, value in fields.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64 or not _is_int(value):
            raise SMPFrameError("'fields' must map names (1-64 chars) to integers")
        counters[key] = value
    return StatGroup(name, counters)


def upload_overhead(size: int, sha: bytes) -> int:
    """Bytes of an upload request's first frame besides its data (header and CBOR keys).

    The first request carries the most fields (``len``, ``sha``), so a chunk that fits
    there fits every later request; ``data`` is counted with its longest (3-byte) header.
    """
    probe = encode_message(
        Header(Op.WRITE, Group.IMAGE, ImageCommand.UPLOAD, 0),
        {"image": 0, "off": size, "len": size, "sha": sha, "data": b""},
    )
    return len(probe) + 2


# --- field checks -----------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, name: str) -> int:
    if not _is_int(value) or not 0 <= value < 2**32:
        raise SMPFrameError(f"'{name}' must be an integer 0..2^32-1, got {type(value).__name__}")
    result: int = value
    return result


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise SMPFrameError(f"'{name}' must be text of at most {limit} characters")
    return value


def _flag(entry: Mapping[str, Any], name: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise SMPFrameError(f"'images[].{name}' must be true or false")
    return value
