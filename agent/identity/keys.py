"""NATS nkeys: generate, encode, sign, verify, and store seeds as 0600 files.

Standard roles (operator, account, user, server, cluster) are encoded and signed with
the ``nkeys`` library. wascap module keys (``M…``) use prefix byte ``12 << 3``, which
``nkeys`` does not know, so their encoding is done here with its CRC16; signing is the
same Ed25519 either way.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nkeys

from agent.errors import IdentityError, KeyFileError
from agent.fsutil import write_secret

__all__ = [
    "KeyKind",
    "KeyPair",
    "decode_public_key",
    "generate",
    "is_public_key",
    "load_seed_file",
    "verify_signature",
    "write_seed_file",
]

_SEED_PREFIX = 18 << 3


class KeyKind(enum.Enum):
    """The role of an nkey, and the prefix byte that makes its first letter."""

    OPERATOR = 14 << 3  # O…
    ACCOUNT = 0  # A…
    USER = 20 << 3  # U…
    SERVER = 13 << 3  # N…
    CLUSTER = 2 << 3  # C…
    MODULE = 12 << 3  # M… (wascap actor subject)

    @property
    def letter(self) -> str:
        """The first character of a public key of this kind."""
        return base64.b32encode(bytes([self.value, 0, 0, 0, 0]))[:1].decode()

    @classmethod
    def from_name(cls, name: str) -> KeyKind:
        """Look a kind up by its lower-case name (``"account"``)."""
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(k.name.lower() for k in cls)
            raise IdentityError(f"unknown key kind '{name}' (known: {known})") from None


_BY_PREFIX = {kind.value: kind for kind in KeyKind}


def _b32decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise IdentityError("not a base32-encoded nkey") from exc


def _with_crc(payload: bytes) -> bytes:
    return payload + bytes(nkeys.crc16_checksum(bytearray(payload)))


def _check_crc(raw: bytes) -> bytes:
    if len(raw) < 3 or bytes(nkeys.crc16_checksum(bytearray(raw[:-2]))) != raw[-2:]:
        raise IdentityError("nkey checksum does not match")
    return raw[:-2]


def encode_public_key(kind: KeyKind, raw: bytes) -> str:
    """Encode 32 raw Ed25519 public key bytes as an nkey of ``kind``."""
    return base64.b32encode(_with_crc(bytes([kind.value]) + raw)).decode().rstrip("=")


def decode_public_key(public_key: str, expected: KeyKind | None = None) -> tuple[KeyKind, bytes]:
    """Decode a public nkey into (kind, 32 raw bytes); check prefix and checksum."""
    kind, raw = _decode_public_key(public_key)
    if expected is not None and kind is not expected:
        raise IdentityError(
            f"'{public_key}' is a {kind.name.lower()} key, expected {expected.name.lower()}"
        )
    return kind, raw


# Every invocation names the same few keys (issuer, host, target); decoding one costs a
# base32 pass and a pure-Python CRC16, so remember the recent ones.
@functools.lru_cache(maxsize=1024)
def _decode_public_key(public_key: str) -> tuple[KeyKind, bytes]:
    raw = _check_crc(_b32decode(public_key.strip()))
    if len(raw) != 33 or raw[0] not in _BY_PREFIX:
        raise IdentityError(f"'{public_key}' is not a public nkey")
    return _BY_PREFIX[raw[0]], raw[1:]


def is_public_key(value: str, kind: KeyKind) -> bool:
    """True when ``value`` is a well-formed public nkey of ``kind``."""
    try:
        decode_public_key(value, kind)
    except IdentityError:
        return False
    return True


def verify_signature(public_key: str, data: bytes, signature: bytes) -> bool:
    """Check an Ed25519 ``signature`` of ``data`` by the holder of ``public_key``."""
    try:
        _verify_key(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(decode_public_key(public_key)[1])


@dataclass(frozen=True, slots=True, repr=False)
class KeyPair:
    """A seed with its role; signs and knows its public key. Never printed."""

    kind: KeyKind
    _raw_seed: bytes
    # Deriving the key pair is an Ed25519 scalar multiplication; do it once, not per use.
    _signing: nacl.signing.SigningKey = field(init=False, compare=False)
    _public: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        signing = nacl.signing.SigningKey(self._raw_seed)
        object.__setattr__(self, "_signing", signing)
        object.__setattr__(self, "_public", encode_public_key(self.kind, bytes(signing.verify_key)))

    @classmethod
    def from_seed(cls, seed: str | bytes) -> KeyPair:
        """Parse an encoded seed (``S…``) of any kind, module keys included."""
        text = seed.decode() if isinstance(seed, bytes) else seed
        raw = _check_crc(_b32decode(text.strip()))
        if len(raw) != 34:
            raise IdentityError("an nkey seed holds 32 bytes of key")
        if raw[0] & 0xF8 != _SEED_PREFIX:
            raise IdentityError("not an nkey seed (it must start with 'S')")
        prefix = ((raw[0] & 0x07) << 5) | ((raw[1] & 0xF8) >> 3)
        if prefix not in _BY_PREFIX:
            raise IdentityError("the seed names an unknown key kind")
        return cls(_BY_PREFIX[prefix], raw[2:])

    @property
    def seed(self) -> str:
        """The encoded seed (secret)."""
        if self.kind is KeyKind.MODULE:
            header = bytes([_SEED_PREFIX | (self.kind.value >> 5), (self.kind.value & 31) << 3])
            return base64.b32encode(_with_crc(header + self._raw_seed)).decode().rstrip("=")
        return str(nkeys.encode_seed(self._raw_seed, self.kind.value).decode())

    @property
    def public_key(self) -> str:
        """The encoded public key, e.g. ``N…`` for a server key."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Ed25519-sign ``data`` (what ``nkeys.KeyPair.sign`` does, with the key kept)."""
        return bytes(self._signing.sign(data).signature)

    def __repr__(self) -> str:
        return f"KeyPair({self.kind.name.lower()}, {self.public_key})"


def generate(kind: KeyKind) -> KeyPair:
    """Make a fresh key of ``kind`` from the OS random source."""
    return KeyPair(kind, os.urandom(32))


def write_seed_file(path: Path, key: KeyPair) -> None:
    """Store ``key``'s seed at ``path`` with mode 0600, atomically."""
    write_secret(path, (key.seed + "\n").encode())


def load_seed_file(path: Path, expected: KeyKind | None = None) -> KeyPair:
    """Read a seed file; the error names the file and what is wrong with it."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"seed file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read seed file {path}: {exc}") from exc
    try:
        key = KeyPair.from_seed(text)
    except IdentityError as exc:
        raise KeyFileError(f"{path} does not hold a valid nkey seed: {exc}") from exc
    if expected is not None and key.kind is not expected:
        raise KeyFileError(
            f"{path} holds a {key.kind.name.lower()} seed, expected {expected.name.lower()}"
        )
    return key
