"""mcumgr's serial framing: SMP frames as base64 lines on a console UART. Pure, no I/O.

A packet is ``u16 length ‖ frame ‖ u16 CRC16-XMODEM(frame)`` (big-endian; ``length``
counts frame and CRC), base64-encoded and cut into lines. The first line starts with the
bytes ``06 09``, every continuation line with ``04 14``, each ends with ``\\n``, and each
line's base64 decodes on its own (Zephyr decodes line by line), so a line carries a multiple
of four base64 characters.

The MCU's log output shares the UART. :class:`LineDecoder` therefore treats every line that
starts with neither delimiter as console text, even between the lines of one packet, and
resynchronises on the next start line after anything malformed: bad base64, a length over
the limit (refused before anything is buffered), a continuation without a start, a CRC
mismatch. It never raises on input; it counts what it threw away.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "CONTINUE_DELIMITER",
    "DEFAULT_LINE_LENGTH",
    "MAX_FRAME",
    "START_DELIMITER",
    "DecoderStats",
    "LineDecoder",
    "crc16_xmodem",
    "encode_packet",
]

START_DELIMITER = b"\x06\x09"
CONTINUE_DELIMITER = b"\x04\x14"
DEFAULT_LINE_LENGTH = 128  # Zephyr's console line buffer holds 127 bytes plus NUL
MAX_FRAME = 8192  # larger than any MCUmgr buffer seen in the field (Zephyr default 384)
MAX_LINE = 2 * MAX_FRAME  # a line longer than this without '\n' is noise, not a frame
_U16 = struct.Struct("!H")


def crc16_xmodem(data: bytes) -> int:
    """CRC16-XMODEM (poly 0x1021, init 0): what mcumgr appends; ``binascii`` does it in C."""
    return binascii.crc_hqx(data, 0)


def encode_packet(frame: bytes, line_length: int = DEFAULT_LINE_LENGTH) -> Iterator[bytes]:
    """The console lines that carry ``frame``, each at most ``line_length`` bytes.

    Raises ``ValueError`` for a frame over :data:`MAX_FRAME` or lines too short to carry
    base64.
    """
    if len(frame) > MAX_FRAME:
        raise ValueError(f"an SMP frame of {len(frame)} bytes is over the {MAX_FRAME} limit")
    per_line = (line_length - len(START_DELIMITER) - 1) // 4 * 4
    if per_line <= 0:
        raise ValueError(f"line length {line_length} cannot carry base64")
    body = _U16.pack(len(frame) + 2) + frame + _U16.pack(crc16_xmodem(frame))
    text = base64.b64encode(body)
    for start in range(0, len(text), per_line):
        delimiter = START_DELIMITER if start == 0 else CONTINUE_DELIMITER
        yield delimiter + text[start : start + per_line] + b"\n"


@dataclass(slots=True)
class DecoderStats:
    """What a :class:`LineDecoder` has seen since it was made."""

    frames: int = 0
    garbled: int = 0  # packets or lines thrown away as malformed
    console_lines: int = 0


class LineDecoder:
    """Turns bytes read from a UART into SMP frames; see the module docstring.

    ``on_console`` receives each console line (without its newline) as it is seen.
    """

    def __init__(
        self,
        *,
        max_frame: int = MAX_FRAME,
        on_console: Callable[[bytes], None] | None = None,
    ) -> None:
        self.max_frame = max_frame
        self.stats = DecoderStats()
        self._on_console = on_console
        self._buffer = bytearray()
        self._skipping = False  # inside an overlong line: drop until its newline
        self._expected = 0  # bytes of frame + CRC the current packet still announces
        self._packet = bytearray()
        self._in_packet = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the frames they completed (CRC checked, CRC removed)."""
        frames: list[bytes] = []
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_LINE:
                    self._buffer.clear()
                    self._skipping = True
                    self._garbled()
                break
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            if self._skipping:
                self._skipping = False
                continue
            frame = self._line(line.removesuffix(b"\r"))
            if frame is not None:
                frames.append(frame)
        return frames

    def _line(self, line: bytes) -> bytes | None:
        if line.startswith(START_DELIMITER):
            if self._in_packet:
                self._garbled()  # the previous packet never finished
            self._reset()
            chunk = self._b64(line[2:])
            if chunk is None or len(chunk) < 2:
                return self._garbled()
            announced = _U16.unpack_from(chunk)[0]
            if not 2 + 8 <= announced <= self.max_frame + 2:  # header + CRC at least
                return self._garbled()
            self._in_packet = True
            self._expected = announced
            return self._append(chunk[2:])
        if line.startswith(CONTINUE_DELIMITER):
            if not self._in_packet:
                return self._garbled()
            chunk = self._b64(line[2:])
            if chunk is None:
                return self._garbled()
            return self._append(chunk)
        self.stats.console_lines += 1
        if self._on_console is not None:
            self._on_console(line)
        return None

    def _append(self, chunk: bytes) -> bytes | None:
        self._packet += chunk
        expected = self._expected
        if len(self._packet) < expected:
            return None
        packet = bytes(self._packet)
        self._reset()
        if len(packet) != expected:  # the last line carried more than announced
            return self._garbled()
        frame, crc = packet[:-2], _U16.unpack_from(packet, len(packet) - 2)[0]
        if crc16_xmodem(frame) != crc:
            return self._garbled()
        self.stats.frames += 1
        return frame

    def _reset(self) -> None:
        self._packet = bytearray()
        self._expected = 0
        self._in_packet = False

    def _garbled(self) -> bytes | None:
        """Throw away the packet in progress; returns None so callers can ``return`` it."""
        self._reset()
        self.stats.garbled += 1
        return None

    @staticmethod
    def _b64(text: bytes) -> bytes | None:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
