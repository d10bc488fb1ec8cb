"""agent.runtime.protocol: frames and messages between the agent and sandbox workers."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import (
    ActorError,
    ClaimsError,
    GuestError,
    ModuleFormatError,
    TrapError,
    UnsupportedFeatureError,
    WorkerProtocolError,
)
from agent.runtime.protocol import (
    MAX_FRAME_BYTES,
    Bye,
    Failure,
    FrameDecoder,
    HostCall,
    HostReply,
    Invoke,
    InvokeBatch,
    Load,
    Log,
    Message,
    Ready,
    Result,
    Unload,
    decode_frames,
    decode_message,
    encode_invoke,
    encode_invoke_batch,
    encode_message,
    encode_result,
    error_from_wire,
    error_to_wire,
)

MESSAGES: list[Message] = [
    Load(1, "actor", b"\x00asm", 65536),
    Invoke(2, "actor", "Echo.Echo", b"\x00\xff" * 10),
    Unload(3, "actor"),
    InvokeBatch(((10, "a", "op", b"x"), (11, "b", "Echo.Echo", b""))),
    HostReply(4, b"reply", None),
    HostReply(5, b"", "no link exists for x on binding y"),
    Bye(),
    Ready(1234, "0.5.0"),
    Result(6, b"out", ("line one", "line two")),
    Result(7, b"", ()),
    Failure(8, "GuestError", "nope", ("log",)),
    HostCall(9, "default", "wasmcloud:messaging", "Messaging.Publish", b"\x80"),
    Log(30, "worker says hi"),
]


def body(frame: bytes) -> bytes:
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    decoded = decode_message(body(encode_message(message)))
    assert decoded == message
    assert type(decoded) is type(message)


def test_fast_encoders_match_the_generic_one() -> None:
    assert encode_invoke(1, "a", "op", b"x") == encode_message(Invoke(1, "a", "op", b"x"))
    assert encode_result(1, b"x", ("l",)) == encode_message(Result(1, b"x", ("l",)))


def test_batches_and_the_frame_decoder_fast_path() -> None:
    items = [(i, "a", "echo", bytes([i])) for i in range(40)]
    frame = encode_invoke_batch(items)
    assert decode_message(body(frame)) == InvokeBatch(tuple(items))
    stream = b"".join(encode_message(m) for m in MESSAGES)
    assert decode_frames(FrameDecoder().feed(stream)) == MESSAGES


def test_frames_split_anywhere_are_reassembled() -> None:
    stream = b"".join(encode_message(m) for m in MESSAGES)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        bodies = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [decode_message(b) for b in bodies] == MESSAGES
        assert decoder.buffered == 0
    decoder = FrameDecoder()
    one_by_one = [b for i in range(len(stream)) for b in decoder.feed(stream[i : i + 1])]
    assert [decode_message(b) for b in one_by_one] == MESSAGES


def test_oversized_frames_are_refused_before_buffering() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(WorkerProtocolError, match="101 bytes announced"):
        decoder.feed(struct.pack(">I", 101))
    with pytest.raises(WorkerProtocolError, match="limit"):
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    with pytest.raises(WorkerProtocolError, match="exceeds"):
        encode_message(Invoke(1, "a", "op", b"\x00" * (MAX_FRAME_BYTES + 1)))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (msgpack.packb([2, 1, "a", "op", b"x"]) + b"\x00", "undecodable"),  # trailing bytes
        (msgpack.packb({"tag": 2}), "array"),
        (msgpack.packb([]), "array"),
        (msgpack.packb(["2", 1]), "unknown message tag"),
        (msgpack.packb([99, 1]), "unknown message tag"),
        (msgpack.packb([2, 1, "a", "op"]), "needs 4 fields"),
        (msgpack.packb([2, 1, "a", "op", "not-bytes"]), "wrong type"),
        (msgpack.packb([17, 1, b"", ["ok", 5]]), "console lines"),
        (msgpack.packb([4, 1, b"", 7]), "wrong type"),
        (msgpack.packb([6, [[1, "a", "op", "not-bytes"]]]), "InvokeBatch items"),
        (msgpack.packb([6, [7]]), "InvokeBatch items"),
        (msgpack.packb([6, 7]), "wrong type"),
    ],
)
def test_garbage_is_a_clear_protocol_error(raw: bytes, match: str) -> None:
    with pytest.raises(WorkerProtocolError, match=match):
        decode_message(raw)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_fuzzed_bodies_decode_or_fail_cleanly(raw: bytes) -> None:
    with contextlib.suppress(WorkerProtocolError):
        decode_message(raw)


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_fuzzed_streams_never_escape_the_error_tree(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame=64)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                decode_message(frame)
    except WorkerProtocolError:
        pass


def test_errors_cross_the_wire_as_their_nearest_known_class() -> None:
    for exc in (GuestError("g"), TrapError("t"), ModuleFormatError("m"), ActorError("a")):
        rebuilt = error_from_wire(error_to_wire(exc), str(exc))
        assert type(rebuilt) is type(exc)
        assert str(rebuilt) == str(exc)
    assert error_to_wire(UnsupportedFeatureError("u")) == "UnsupportedFeatureError"
    assert error_to_wire(ClaimsError("c")) == "ModuleError"
    assert type(error_from_wire("SystemExit", "x")) is ActorError
