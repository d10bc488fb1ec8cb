"""The msgpack payload codec of wasmbus-rpc host calls, with errors an actor can read.

wasmbus-rpc actors encode arguments with ``rmp_serde::to_vec_named``: structs are msgpack
maps keyed by field name, ``Vec<u8>`` fields with ``serde_bytes`` are msgpack **bin**
(wasmCloud/weld:rpc-rs/src/common.rs; wasmCloud/interfaces:messaging/rust/src/messaging.rs).
wasmbus-rpc may put a one-byte format prefix in front: ``0xc1`` (a byte msgpack never uses)
means msgpack and is stripped here, ``0x7f`` means CBOR, which this host does not speak
(wasmCloud/wasmCloud:crates/host/src/wasmbus/mod.rs@v0.82.0 ``decode_provider_response``).
Responses are plain msgpack without a prefix, which every wasmbus-rpc version reads.

Structs are accepted only as named maps: rmp_serde would also take a positional array, but
the field order differs between interface code generations (alphabetical in early
``messaging.rs``, ``@n`` order later), so a positional array cannot be read reliably.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from agent.errors import PayloadError

__all__ = [
    "CBOR_PREFIX",
    "I32_MAX",
    "I32_MIN",
    "MSGPACK_PREFIX",
    "U32_MAX",
    "Struct",
    "decode",
    "decode_string_or_field",
    "decode_struct",
    "encode",
    "string_list",
]

MSGPACK_PREFIX: Final = 0xC1
CBOR_PREFIX: Final = 0x7F
I32_MIN: Final = -(2**31)
I32_MAX: Final = 2**31 - 1
U32_MAX: Final = 2**32 - 1

_MISSING: Final = object()


def decode(payload: bytes, where: str) -> Any:
    """Decode one msgpack value, stripping an optional ``0xc1`` format prefix.

    ``where`` (``"wasmcloud:keyvalue KeyValue.Get"``) starts every error message.

    Raises:
        PayloadError: the bytes are empty, CBOR, not msgpack, or carry trailing bytes.
    """
    if payload[:1] == bytes([MSGPACK_PREFIX]):
        payload = payload[1:]
    elif payload[:1] == bytes([CBOR_PREFIX]) and len(payload) > 1:
        # A lone 0x7f is the msgpack integer 127; anything longer starting with it is the
        # CBOR marker (a msgpack value never has bytes after a top-level fixint).
        raise PayloadError(f"{where}: CBOR-encoded payloads are not supported, send msgpack")
    if not payload:
        raise PayloadError(f"{where}: the payload is empty, expected msgpack")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except msgpack.ExtraData as exc:
        raise PayloadError(f"{where}: the payload has bytes after its msgpack value") from exc
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{where}: the payload has a string that is not UTF-8") from exc
    except msgpack.OutOfData as exc:
        raise PayloadError(f"{where}: the payload is truncated msgpack") from exc
    except msgpack.StackError as exc:
        raise PayloadError(f"{where}: the payload is nested too deeply") from exc
    except msgpack.FormatError as exc:
        raise PayloadError(f"{where}: the payload uses a byte msgpack reserves") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # Bad type bytes, non-string map keys, reserved codes: msgpack's text says which.
        detail = str(exc) or type(exc).__name__
        raise PayloadError(f"{where}: the payload is not valid msgpack ({detail})") from exc


def encode(value: Any) -> bytes:
    """Encode a response: msgpack, strings as str and ``bytes`` as bin."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def decode_struct(payload: bytes, where: str) -> Struct:
    """Decode a payload that must be a named-field struct (a msgpack map)."""
    value = decode(payload, where)
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected a msgpack map with named fields, got {_kind(value)}")
    return Struct(value, where)


def decode_string_or_field(payload: bytes, where: str, *fields: str) -> str:
    """Decode an operation whose input is a bare ``String`` (``KeyValue.Get``).

    The interface sends a msgpack str; a map holding the string under one of ``fields``
    (``{"key": ...}``, the older ``GetArgs`` shape) is accepted too.
    """
    value = decode(payload, where)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        struct = Struct(value, where)
        for name in fields:
            if name in value:
                return struct.string(name)
        wanted = " or ".join(repr(name) for name in fields)
        raise PayloadError(f"{where}: the map has no {wanted} field")
    raise PayloadError(f"{where}: expected a msgpack string, got {_kind(value)}")


class Struct:
    """Typed access to the fields of a decoded struct, with errors naming the field."""

    __slots__ = ("_fields", "_where")

    def __init__(self, fields: dict[str, Any], where: str) -> None:
        self._fields = fields
        self._where = where

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def _get(self, name: str, default: Any) -> Any:
        value = self._fields.get(name, _MISSING)
        # rmp_serde writes ``Option::None`` as nil when skip_serializing_if is absent.
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise PayloadError(f"{self._where}: missing field '{name}'")
            return default
        return value

    def _wrong(self, name: str, expected: str, value: Any) -> PayloadError:
        return PayloadError(f"{self._where}: field '{name}' must be {expected}, got {_kind(value)}")

    def string(self, name: str, default: Any = _MISSING) -> str:
        """A msgpack str field."""
        value = self._get(name, default)
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        return value

    def optional_string(self, name: str) -> str | None:
        """A msgpack str field that may be absent or nil."""
        value = self._get(name, None)
        if value is not None and not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        return value

    def blob(self, name: str, default: Any = _MISSING) -> bytes:
        """A ``Blob`` field: msgpack bin (a str is taken as its UTF-8, as serde_bytes does)."""
        value = self._get(name, default)
        if isinstance(value, str):
            return value.encode()
        if not isinstance(value, bytes):
            raise self._wrong(name, "bytes (msgpack bin)", value)
        return value

    def integer(self, name: str, low: int, high: int, default: Any = _MISSING) -> int:
        """An integer field within ``[low, high]`` (``I32``, ``U32``)."""
        value = self._get(name, default)
        # bool is an int in Python but a distinct msgpack type: refuse it like rmp_serde.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(name, "an integer", value)
        if not low <= value <= high:
            raise PayloadError(f"{self._where}: field '{name}' is {value}, outside [{low}, {high}]")
        return value

    def string_list(self, name: str) -> list[str]:
        """A list-of-strings field (``StringList``)."""
        value = self._get(name, _MISSING)
        return string_list(value, f"{self._where}: field '{name}'")


def string_list(value: Any, what: str) -> list[str]:
    """Check that ``value`` is a list of str; ``what`` starts the error message."""
    if not isinstance(value, list):
        raise PayloadError(f"{what} must be a list of strings, got {_kind(value)}")
    for item in value:
        if not isinstance(item, str):
            raise PayloadError(f"{what} must be a list of strings, got an item {_kind(item)}")
    return value


def _kind(value: Any) -> str:
    """The msgpack-ish type name of a decoded value, for error messages."""
    match value:
        case None:
            return "nil"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case bytes():
            return "bin"
        case list():
            return "an array"
        case dict():
            return "a map"
        case _:
            return f"an extension value ({type(value).__name__})"
