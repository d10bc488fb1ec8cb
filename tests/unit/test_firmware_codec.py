"""The pure SMP layer: serial line framing and messages, against the ``smp`` package's own
encoder, decoder and models, and fuzzed with hypothesis."""

from __future__ import annotations

import base64
import contextlib
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smp import image_management as im
from smp import os_management as osm
from smp import packet
from smp import statistics_management as sm

from agent.errors import DeviceError, SMPFrameError
from firmware_bridge import codec
from firmware_bridge.codec import Group, Header, ImageCommand, Op, OsCommand
from firmware_bridge.framing import MAX_FRAME, LineDecoder, crc16_xmodem, encode_packet


def test_crc16_is_xmodem() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the catalogued check value


@pytest.mark.parametrize("size", [8, 50, 93, 94, 300, 2000, MAX_FRAME])
def test_lines_are_what_smp_encodes_and_decode_back(size: int) -> None:
    frame = bytes((i * 31) % 256 for i in range(size))
    lines = list(encode_packet(frame))
    assert lines == list(packet.encode(frame, line_length=128))
    assert lines[0].startswith(b"\x06\x09") and all(x.startswith(b"\x04\x14") for x in lines[1:])
    assert all(len(line) <= 127 and line.endswith(b"\n") for line in lines)
    decoder = LineDecoder()
    assert decoder.feed(b"".join(lines)) == [frame]


def test_console_lines_between_and_inside_packets_are_skipped() -> None:
    frames = [b"A" * 20, b"B" * 400]
    noisy = b"*** Booting Zephyr ***\r\n"
    for frame in frames:
        for line in encode_packet(frame):
            noisy += line + b"[00:00:01.000,000] <inf> app: tick\r\n"
    seen: list[bytes] = []
    decoder = LineDecoder(on_console=seen.append)
    assert decoder.feed(noisy) == frames
    assert decoder.stats.console_lines == len(seen) > 5
    assert decoder.stats.garbled == 0


def test_garbled_packet_is_dropped_and_the_next_one_decodes() -> None:
    good, bad = b"G" * 200, bytearray(b"".join(encode_packet(b"X" * 200)))
    bad[10] ^= 0x01  # one flipped bit in the base64 of the first line
    decoder = LineDecoder()
    assert decoder.feed(bytes(bad) + b"".join(encode_packet(good))) == [good]
    assert decoder.stats.garbled == 1


def test_oversized_length_is_refused_before_buffering() -> None:
    announce = base64.b64encode(struct.pack("!H", 60000) + b"\x00" * 4)
    decoder = LineDecoder(max_frame=1024)
    assert decoder.feed(b"\x06\x09" + announce + b"\n") == []
    assert decoder.stats.garbled == 1
    continuation = b"\x04\x14" + base64.b64encode(b"\x00" * 90) + b"\n"
    assert decoder.feed(continuation * 100) == []  # stray continuations, not a growing packet
    assert decoder.stats.garbled == 101


def test_overlong_line_without_newline_is_dropped() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b"x" * (3 * MAX_FRAME)) == []
    frame = b"after the noise"
    assert decoder.feed(b"still noise\n" + b"".join(encode_packet(frame))) == [frame]


def test_packet_cut_short_by_a_new_start_resynchronises() -> None:
    first = list(encode_packet(b"F" * 300))
    second = b"S" * 30
    decoder = LineDecoder()
    assert decoder.feed(first[0] + b"".join(encode_packet(second))) == [second]
    assert decoder.stats.garbled == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_the_decoder_never_raises_and_only_returns_checked_frames(data: bytes) -> None:
    decoder = LineDecoder(max_frame=512)
    for frame in decoder.feed(data):
        assert len(frame) <= 512


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(min_size=8, max_size=600), min_size=1, max_size=4),
    st.lists(st.sampled_from([b"log line\n", b"\r\n", b"\x06", b"\x04\x14zz\n"]), max_size=4),
    st.integers(1, 64),
)
def test_frames_survive_noise_and_any_chunking(
    frames: list[bytes], noise: list[bytes], chunk: int
) -> None:
    stream = b"".join(n for n in noise) + b"\n"
    for frame in frames:
        stream += b"".join(encode_packet(frame)) + b"<wrn> between\n"
    decoder = LineDecoder()
    out: list[bytes] = []
    for start in range(0, len(stream), chunk):
        out += decoder.feed(stream[start : start + chunk])
    assert out == frames


# --- messages ---------------------------------------------------------------------------


def test_requests_we_encode_are_what_smp_models_read() -> None:
    echo = codec.encode_message(Header(Op.WRITE, Group.OS, OsCommand.ECHO, 7), {"d": "hello"})
    parsed = osm.EchoWriteRequest.loads(echo)
    assert parsed.d == "hello" and parsed.header.sequence == 7
    upload = codec.encode_message(
        Header(Op.WRITE, Group.IMAGE, ImageCommand.UPLOAD, 200),
        {"image": 0, "off": 0, "data": b"\x01" * 40, "len": 4000, "sha": b"s" * 32},
    )
    request = im.ImageUploadWriteRequest.loads(upload)
    assert (request.off, request.len, request.sha, len(request.data)) == (0, 4000, b"s" * 32, 40)
    assert bytes(request) == upload


def test_answers_smp_models_build_are_what_we_read() -> None:
    echo = codec.decode_message(bytes(osm.EchoWriteResponse(sequence=3, r="hi")))
    assert echo.header.sequence == 3 and echo.header.op == Op.WRITE_RSP
    assert codec.read_echo(echo.body) == "hi"
    params = osm.MCUMgrParametersReadResponse(sequence=1, buf_size=2048, buf_count=4)
    assert codec.read_params(codec.decode_message(bytes(params)).body) == codec.Params(2048, 4)
    states = im.ImageStatesReadResponse(
        sequence=9,
        images=[im.ImageState(slot=0, version="1.2.3", hash=b"h" * 32, active=True,
                              confirmed=True),
                im.ImageState(slot=1, version="1.3.0", hash=b"n" * 32, pending=True)],
    )  # fmt: skip
    slots = codec.read_image_states(codec.decode_message(bytes(states)).body)
    assert [(s.slot, s.version, s.active, s.pending) for s in slots] == [
        (0, "1.2.3", True, False), (1, "1.3.0", False, True)
    ]  # fmt: skip
    up = im.ImageUploadWriteResponse(sequence=2, off=512, match=True)
    assert codec.read_upload(codec.decode_message(bytes(up)).body) == codec.UploadReply(512, True)
    stats = sm.GroupDataResponse(sequence=4, name="sim", fields={"a": 1, "b": -2})
    read = codec.read_stat_group(codec.decode_message(bytes(stats)).body)
    assert read == codec.StatGroup("sim", {"a": 1, "b": -2})
    listed = sm.ListOfGroupsResponse(sequence=5, stat_list=("sim", "smp"))
    assert codec.read_stat_list(codec.decode_message(bytes(listed)).body) == ("sim", "smp")


def test_errors_v1_and_v2_become_device_errors() -> None:
    v2 = codec.decode_message(
        codec.encode_message(Header(Op.WRITE_RSP, 1, 0, 1), {"err": {"group": 1, "rc": 5}})
    )
    error = codec.error_of(v2)
    assert isinstance(error, DeviceError) and (error.rc, error.group) == (5, 1)
    v1 = codec.decode_message(codec.encode_message(Header(Op.READ_RSP, 0, 6, 1), {"rc": 8}))
    error = codec.error_of(v1)
    assert isinstance(error, DeviceError) and error.rc == 8 and "ENOTSUP" in str(error)
    ok = codec.decode_message(codec.encode_message(Header(Op.WRITE_RSP, 1, 1, 1), {"rc": 0}))
    assert codec.error_of(ok) is None


def test_header_length_must_match() -> None:
    frame = codec.encode_message(Header(Op.READ_RSP, 0, 0, 1), {"r": "x"})
    with pytest.raises(SMPFrameError, match="header says"):
        codec.decode_message(frame + b"\x00")
    with pytest.raises(SMPFrameError, match="8 header bytes"):
        codec.decode_message(frame[:5])


def test_readers_name_the_bad_field() -> None:
    with pytest.raises(SMPFrameError, match="'off'"):
        codec.read_upload({"off": "zero"})
    with pytest.raises(SMPFrameError, match="'images'"):
        codec.read_image_states({"images": "none"})
    with pytest.raises(SMPFrameError, match="'fields'"):
        codec.read_stat_group({"name": "x", "fields": {"a": "b"}})
    with pytest.raises(SMPFrameError, match="bootable"):
        codec.read_image_states({"images": [{"slot": 0, "version": "1", "bootable": 1}]})


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_decode_message_raises_only_frame_errors(data: bytes) -> None:
    try:
        message = codec.decode_message(data)
    except SMPFrameError:
        return
    assert isinstance(message.body, dict)
    codec.error_of(message)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=80)
    | st.binary(max_size=80) | st.floats(allow_nan=True),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)  # fmt: skip
bodies = st.dictionaries(
    st.sampled_from(["r", "off", "match", "images", "buf_size", "buf_count", "name", "fields",
                     "stat_list", "output", "err", "rc", "rsn"]),
    cbor_values, max_size=6,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_readers_raise_only_frame_errors(body: dict[str, Any]) -> None:
    readers = (codec.read_echo, codec.read_params, codec.read_app_info, codec.read_image_states,
               codec.read_upload, codec.read_stat_list, codec.read_stat_group)  # fmt: skip
    for reader in readers:
        with contextlib.suppress(SMPFrameError):
            reader(body)
    message = codec.Message(Header(Op.READ_RSP, 0, 0, 0), body)
    error = codec.error_of(message)
    assert error is None or isinstance(error.rc, int)
