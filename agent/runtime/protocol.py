"""The agent <-> sandbox worker wire protocol. A pure codec: no I/O.

Every message is one frame: a 4-byte big-endian body length, then a msgpack array whose
first element is the message tag and the rest the fields of one of the NamedTuples below.
Arrays, not maps, because this is the hot path of every invocation.

Agent -> worker: :class:`Load`, :class:`Invoke`, :class:`InvokeBatch`, :class:`Unload`,
:class:`HostReply`, :class:`Bye`. Worker -> agent: :class:`Ready`, :class:`Result`,
:class:`Failure`, :class:`HostCall`, :class:`Log`. ``req_id`` pairs a request with its
result; a :class:`HostCall` carries the ``req_id`` of the invocation (or load) that made it
and its :class:`HostReply` echoes it.

The agent sends the invocations it queued during one event-loop iteration as one
:class:`InvokeBatch` (one msgpack array of ``(req_id, actor_id, operation, payload)``): one
frame to encode and decode instead of dozens. The worker runs requests in the order they
arrive, except that while a guest waits for a host reply it may run requests for other
actors (nested invocations), so answers can come out of order; the worker's status page
(:mod:`agent.runtime.statuspage`) tells the agent what was running when a worker dies.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from agent.errors import (
    ActorError,
    GuestError,
    LatticeEdgeError,
    ModuleError,
    ModuleExportError,
    ModuleFormatError,
    ModuleImportError,
    TrapError,
    UnsupportedFeatureError,
    WorkerProtocolError,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_BYTES",
    "Bye",
    "Failure",
    "FrameDecoder",
    "HostCall",
    "HostReply",
    "Invoke",
    "InvokeBatch",
    "InvokeItem",
    "Load",
    "Log",
    "Message",
    "Ready",
    "Result",
    "Unload",
    "decode_frames",
    "decode_message",
    "encode_invoke",
    "encode_invoke_batch",
    "encode_message",
    "encode_result",
    "error_from_wire",
    "error_to_wire",
]

HEADER_SIZE = 4
# Large enough for a debug-built actor (logger.wasm is 1.7 MB) and a 1 MiB NATS payload.
MAX_FRAME_BYTES = 32 * 1024 * 1024
_HEADER = struct.Struct(">I")


class Load(NamedTuple):
    """Instantiate ``wasm`` as ``actor_id`` (replacing an instance of the same id)."""

    req_id: int
    actor_id: str
    wasm: bytes
    stack_bytes: int


class Invoke(NamedTuple):
    """Run ``operation`` with ``payload`` on a loaded actor."""

    req_id: int
    actor_id: str
    operation: str
    payload: bytes


InvokeItem = tuple[int, str, str, bytes]
"""One invocation inside an :class:`InvokeBatch`: ``(req_id, actor_id, operation, payload)``."""


class InvokeBatch(NamedTuple):
    """Several :class:`Invoke` requests in one frame, to be run in this order."""

    items: tuple[InvokeItem, ...]


class Unload(NamedTuple):
    """Drop an actor's instance."""

    req_id: int
    actor_id: str


class HostReply(NamedTuple):
    """The agent's answer to a :class:`HostCall`: ``error`` is None on success."""

    req_id: int
    payload: bytes
    error: str | None


class Bye(NamedTuple):
    """Finish the requests already sent, then exit."""


class Ready(NamedTuple):
    """The worker is up: its pid and the wasm3 version it runs."""

    pid: int
    wasm3_version: str


class Result(NamedTuple):
    """A request succeeded: the response (empty for load/unload) and console lines."""

    req_id: int
    payload: bytes
    console: tuple[str, ...]


class Failure(NamedTuple):
    """A request failed: the error class name (see :func:`error_to_wire`) and message."""

    req_id: int
    kind: str
    message: str
    console: tuple[str, ...]


class HostCall(NamedTuple):
    """The guest running request ``req_id`` called ``__host_call``; the worker waits."""

    req_id: int
    binding: str
    namespace: str
    operation: str
    payload: bytes


class Log(NamedTuple):
    """A log record from the worker itself (``logging`` level number and text)."""

    level: int
    text: str


Message = (
    Load
    | Invoke
    | InvokeBatch
    | Unload
    | HostReply
    | Bye
    | Ready
    | Result
    | Failure
    | HostCall
    | Log
)

_TAGS: dict[type[Any], int] = {
    Load: 1,
    Invoke: 2,
    Unload: 3,
    HostReply: 4,
    Bye: 5,
    InvokeBatch: 6,
    Ready: 16,
    Result: 17,
    Failure: 18,
    HostCall: 19,
    Log: 20,
}
_BY_TAG = {tag: cls for cls, tag in _TAGS.items()}
_NONE = type(None)
# Field types per message, checked with one C-level map(isinstance, ...) per frame.
_FIELD_TYPES: dict[type[Any], tuple[type | tuple[type, ...], ...]] = {
    Load: (int, str, bytes, int),
    Invoke: (int, str, str, bytes),
    Unload: (int, str),
    HostReply: (int, bytes, (str, _NONE)),
    Bye: (),
    InvokeBatch: (tuple,),
    Ready: (int, str),
    Result: (int, bytes, tuple),
    Failure: (int, str, str, tuple),
    HostCall: (int, str, str, str, bytes),
    Log: (int, str),
}
_CHECKS = {_TAGS[cls]: (cls, types, len(types)) for cls, types in _FIELD_TYPES.items()}
_WITH_CONSOLE = (Result, Failure)
_ITEM_TYPES = {(int, str, str, bytes)}  # the one shape an InvokeBatch item may have
_tuple_new = tuple.__new__
_unpackb = msgpack.unpackb
# One packer reused for every frame (packb builds a new one per call). Not thread-safe:
# the agent encodes on its event loop thread, a worker on its only thread.
_PACKER = msgpack.Packer(use_bin_type=True)

# Only these classes cross the pipe; anything else arrives as a plain ActorError.
_WIRE_ERRORS: dict[str, type[LatticeEdgeError]] = {
    cls.__name__: cls
    for cls in (
        ActorError,
        GuestError,
        TrapError,
        ModuleError,
        ModuleFormatError,
        ModuleImportError,
        ModuleExportError,
        UnsupportedFeatureError,
    )
}


def encode_message(message: Message) -> bytes:
    """Encode one message as a complete frame (header included)."""
    body: bytes = _PACKER.pack((_TAGS[type(message)], *message))
    if len(body) > MAX_FRAME_BYTES:
        raise WorkerProtocolError(
            f"a {type(message).__name__} frame of {len(body)} bytes exceeds the "
            f"{MAX_FRAME_BYTES}-byte limit"
        )
    return _HEADER.pack(len(body)) + body


def encode_invoke(req_id: int, actor_id: str, operation: str, payload: bytes) -> bytes:
    """``encode_message(Invoke(...))`` without building the tuple: the agent's hot path."""
    body: bytes = _PACKER.pack((2, req_id, actor_id, operation, payload))
    if len(body) > MAX_FRAME_BYTES:
        raise WorkerProtocolError(f"an invocation of {len(body)} bytes exceeds the frame limit")
    return _HEADER.pack(len(body)) + body


def encode_invoke_batch(items: list[InvokeItem]) -> bytes:
    """One :class:`InvokeBatch` frame; the caller keeps it under :data:`MAX_FRAME_BYTES`."""
    body: bytes = _PACKER.pack((6, items))
    if len(body) > MAX_FRAME_BYTES:
        raise WorkerProtocolError(f"an invocation batch of {len(body)} bytes exceeds the limit")
    return _HEADER.pack(len(body)) + body


def encode_result(req_id: int, payload: bytes, console: tuple[str, ...]) -> bytes:
    """``encode_message(Result(...))`` without building the tuple: the worker's hot path."""
    body: bytes = _PACKER.pack((17, req_id, payload, console))
    if len(body) > MAX_FRAME_BYTES:
        raise WorkerProtocolError(f"a result of {len(body)} bytes exceeds the frame limit")
    return _HEADER.pack(len(body)) + body


def decode_message(body: bytes | memoryview) -> Message:
    """Decode one frame body; raise :class:`WorkerProtocolError` on anything malformed."""
    return decode_frames([body])[0]


def decode_frames(bodies: Sequence[bytes | memoryview]) -> list[Message]:
    """Decode frame bodies, with the commonest frame (a Result without console lines)
    taken on a fast path: this is the agent's hot path, one call per pipe read."""
    messages: list[Message] = []
    append = messages.append
    for body in bodies:
        try:
            items = _unpackb(body, raw=False, use_list=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise WorkerProtocolError(f"undecodable frame ({len(body)} bytes): {exc}") from None
        if (
            type(items) is tuple
            and len(items) == 4
            and items[0] == 17
            and type(items[1]) is int
            and type(items[2]) is bytes
            and items[3] == ()
        ):
            append(_tuple_new(Result, items[1:]))
        else:
            append(_from_items(items))
    return messages


def _from_items(items: object) -> Message:
    if type(items) is not tuple or not items:
        raise WorkerProtocolError("a frame must be a non-empty msgpack array")
    check = _CHECKS.get(items[0]) if type(items[0]) is int else None
    if check is None:
        raise WorkerProtocolError(f"unknown message tag {items[0]!r:.20}")
    cls, types, count = check
    fields = items[1:]
    if len(fields) != count:
        raise WorkerProtocolError(
            f"{cls.__name__} needs {count} fields, the frame has {len(fields)}"
        )
    if not all(map(isinstance, fields, types)):
        raise WorkerProtocolError(f"{cls.__name__} has a field of the wrong type")
    if cls in _WITH_CONSOLE and fields[-1] and not all(type(x) is str for x in fields[-1]):
        raise WorkerProtocolError(f"{cls.__name__} console lines must be strings")
    if (
        cls is InvokeBatch
        and {tuple(map(type, item)) if type(item) is tuple else () for item in fields[0]}
        - _ITEM_TYPES
    ):
        raise WorkerProtocolError("InvokeBatch items must be (int, str, str, bytes)")
    message: Message = cls._make(fields)
    return message


def error_to_wire(exc: LatticeEdgeError) -> str:
    """The name under which ``exc``'s class travels (its nearest class known on the wire)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _WIRE_ERRORS and _WIRE_ERRORS[cls.__name__] is cls:
            return cls.__name__
    return ActorError.__name__


def error_from_wire(kind: str, message: str) -> LatticeEdgeError:
    """Rebuild the exception a :class:`Failure` describes (ActorError for unknown kinds)."""
    return _WIRE_ERRORS.get(kind, ActorError)(message)


class FrameDecoder:
    """Split a byte stream into frame bodies.

    Raises :class:`WorkerProtocolError` when a header announces more than ``max_frame``
    bytes, before buffering them, so a garbage stream cannot make the reader allocate.
    Bodies are returned as memoryviews into the data fed (no copy per frame): decode each
    before the next :meth:`feed`.
    """

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | memoryview) -> list[memoryview]:
        """Add ``data``; return the bodies of every frame it completes, in order."""
        buffer, unpack_from, limit = self._buffer, _HEADER.unpack_from, self._max
        if buffer:
            buffer += data
            if len(buffer) < HEADER_SIZE:
                return []
            (length,) = unpack_from(buffer, 0)
            if length > limit:
                raise WorkerProtocolError(
                    f"frame of {length} bytes announced, the limit is {limit}"
                )
            if len(buffer) < HEADER_SIZE + length:
                return []  # a large frame arriving in pieces: copy it out once, when complete
            # Frames are sliced from an immutable copy: the buffer itself must stay resizable.
            data = bytes(buffer)
            buffer.clear()
        view = memoryview(data)
        frames: list[memoryview] = []
        pos, size = 0, len(data)
        while size - pos >= HEADER_SIZE:
            (length,) = unpack_from(data, pos)
            if length > limit:
                raise WorkerProtocolError(
                    f"frame of {length} bytes announced, the limit is {limit}"
                )
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            frames.append(view[pos + HEADER_SIZE : end])
            pos = end
        if pos < size:
            buffer += view[pos:]
        return frames
