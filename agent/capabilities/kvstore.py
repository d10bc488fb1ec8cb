"""Storage under the keyvalue capability: a local JetStream KV bucket, keys and values.

**Keys.** NATS KV keys may only use ``[-/_=.A-Za-z0-9]`` and may not start or end with
``.`` (nats-py ``nats/js/kv.py`` ``VALID_KEY_RE``/``_is_key_valid``). A wasmCloud key made
of ``[-/_A-Za-z0-9]`` runs joined by single dots is stored as itself, so ``nats kv get``
shows it; any other key (spaces, ``:``, unicode, ``..``, ...) is stored as ``=`` followed
by its unpadded RFC 4648 base32 UTF-8. Plain keys never contain ``=`` and encoded ones
always start with it, so the mapping is one-to-one. Keys starting with ``_kv`` are encoded
too, as NATS reserves that prefix.

**Values.** Strings without expiry are stored as their UTF-8 bytes. Lists, sets and
expiring strings are stored as the byte ``0xc1`` followed by msgpack
``["list", [items]]``, ``["set", [items]]`` or ``["str", text, expires_at_unix_ms]``;
``0xc1`` never occurs in UTF-8, so the two forms cannot be confused. Lists, sets and
strings share one key space, as in Redis (the kvredis provider): using a key as the wrong
kind is an error. Expiry is kept in the value rather than with per-message TTLs, which
need nats-server 2.11 while devices run 2.9.10; an expired value reads as missing and is
deleted when next touched.

**Bucket.** Created on first use if missing (history 1, bounded bytes and value size). If
it disappears while the agent runs (deleted, or recreated by someone else), writes fail
with "no response from stream"; the bucket is then bound or created again and the write
retried once. Reads of a missing bucket see missing keys, which is what a new bucket holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import msgpack

from agent.errors import CapabilityError, CapabilityTimeout, CapabilityUnavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

__all__ = [
    "DEFAULT_BUCKET",
    "KEEP",
    "Bucket",
    "Keep",
    "KeyValueSettings",
    "Mutation",
    "Stored",
    "map_js_errors",
    "now_ms",
    "original_key",
    "pack_value",
    "storage_key",
    "unpack_value",
]

DEFAULT_BUCKET: Final = "LATTICE_EDGE_KV"
_TAG: Final = b"\xc1"
_PLAIN_KEY = re.compile(r"[-/_A-Za-z0-9]+(?:\.[-/_A-Za-z0-9]+)*")
_BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]+")
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_MAX_BYTES_EXCEEDED: Final = 10077
_MESSAGE_TOO_LARGE: Final = 10054
_STREAM_NAME_IN_USE: Final = 10058

Kind = Literal["string", "list", "set"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KeyValueSettings:
    """Where and how much the keyvalue capability may store.

    ``max_bytes`` bounds the whole bucket (JetStream refuses writes past it, reported as
    "the store is full"); ``max_value_bytes`` one stored value, a list or set included;
    ``max_items`` the members of one list or set. ``js_domain`` is the leaf's JetStream
    domain when the local API must be addressed by domain.
    """

    bucket: str = DEFAULT_BUCKET
    max_bytes: int = 16 * 1024 * 1024
    max_value_bytes: int = 256 * 1024
    max_key_bytes: int = 1024
    max_items: int = 10_000
    storage: Literal["file", "memory"] = "file"
    js_domain: str | None = None
    api_timeout: float = 2.0
    cas_attempts: int = 100

    def __post_init__(self) -> None:
        if not _BUCKET_NAME.fullmatch(self.bucket):
            raise ValueError(f"bucket name {self.bucket!r} must match [A-Za-z0-9_-]+")
        if not 0 < self.max_value_bytes <= self.max_bytes:
            raise ValueError("need 0 < max_value_bytes <= max_bytes")
        if self.max_key_bytes < 1 or self.max_items < 1 or self.cas_attempts < 1:
            raise ValueError("max_key_bytes, max_items and cas_attempts must be at least 1")
        if self.api_timeout <= 0:
            raise ValueError("api_timeout must be positive")


@dataclass(frozen=True, slots=True)
class Stored:
    """One decoded value: a string (maybe expiring), a list or a set."""

    kind: Kind
    text: str = ""
    items: tuple[str, ...] = field(default=())
    expires_at_ms: int = 0

    def expired(self, now_ms: int) -> bool:
        """True when an expiring string's deadline has passed."""
        return self.expires_at_ms != 0 and now_ms >= self.expires_at_ms


def storage_key(key: str) -> str:
    """The NATS KV key that stores the wasmCloud key ``key`` (see the module docstring)."""
    if _PLAIN_KEY.fullmatch(key) and not key.startswith("_kv"):
        return key
    return "=" + base64.b32encode(key.encode()).decode("ascii").rstrip("=")


def original_key(stored: str) -> str:
    """Invert :func:`storage_key`."""
    if not stored.startswith("="):
        return stored
    body = stored[1:]
    return base64.b32decode(body + "=" * (-len(body) % 8)).decode()


def pack_value(value: Stored) -> bytes:
    """Encode a value for the bucket."""
    if value.kind == "string" and not value.expires_at_ms:
        return value.text.encode()
    if value.kind == "string":
        body: list[Any] = ["str", value.text, value.expires_at_ms]
    else:
        body = ["list" if value.kind == "list" else "set", list(value.items)]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return _TAG + packed


def unpack_value(data: bytes, key: str) -> Stored:
    """Decode a stored value; a value this module did not write is a clear error."""
    if not data.startswith(_TAG):
        try:
            return Stored("string", data.decode())
        except UnicodeDecodeError:
            raise CapabilityError(f"the value of key {key!r} is not UTF-8 text") from None
    try:
        body = msgpack.unpackb(data[1:], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        body = None
    match body:
        case ["str", str(text), int(expires)]:
            return Stored("string", text, expires_at_ms=expires)
        case ["list" | "set" as kind, list(items)] if all(isinstance(i, str) for i in items):
            return Stored("list" if kind == "list" else "set", items=tuple(items))
    raise CapabilityError(f"the value of key {key!r} is corrupt (not written by this agent?)")


def now_ms() -> int:
    """Wall-clock milliseconds, the time base of expiring values."""
    return time.time_ns() // 1_000_000


class Keep:
    """Returned by a mutation that leaves the stored value as it is."""


KEEP: Final = Keep()
Mutation = Callable[[Stored | None], tuple[Stored | Keep | None, T]]


class Bucket:
    """A JetStream KV bucket bound lazily, recreated if it vanishes, with CAS updates."""

    def __init__(self, client: Client, settings: KeyValueSettings) -> None:
        self.settings = settings
        self._nc = client
        self._kv: KeyValue | None = None
        self._bind_lock = asyncio.Lock()
        # One lock per stored key serialises this agent's own updates of a key, so
        # concurrent actors do not burn CAS rounds against each other; CAS still guards
        # against other writers.
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def open(self) -> KeyValue:
        """Bind the bucket, creating it if missing."""
        if self._kv is None:
            async with self._bind_lock:
                if self._kv is None:
                    self._kv = await self._bind()
        return self._kv

    async def _bind(self) -> KeyValue:
        import nats.js.api
        import nats.js.errors

        s = self.settings
        js = self._nc.jetstream(domain=s.js_domain, timeout=s.api_timeout)
        with map_js_errors(s.bucket):
            try:
                return await js.key_value(s.bucket)
            except nats.js.errors.BucketNotFoundError:
                pass
            config = nats.js.api.KeyValueConfig(
                bucket=s.bucket,
                description="Lattice Edge: wasmcloud:keyvalue for local actors",
                history=1,
                max_bytes=s.max_bytes,
                # Headroom for the 0xc1 envelope and msgpack framing of the largest value.
                max_value_size=s.max_value_bytes + 64,
                storage=nats.js.api.StorageType(s.storage),
            )
            try:
                return await js.create_key_value(config)
            except nats.js.errors.BadRequestError as exc:
                if getattr(exc, "err_code", None) != _STREAM_NAME_IN_USE:
                    raise
                # Created meanwhile by someone else, with other limits: use theirs.
                return await js.key_value(s.bucket)

    def key_lock(self, name: str) -> asyncio.Lock:
        """The in-process lock of one stored key."""
        lock = self._key_locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._key_locks[name] = lock
        return lock

    async def _with_bucket(self, action: Callable[[KeyValue], Awaitable[T]]) -> T:
        import nats.errors
        import nats.js.errors

        kv = await self.open()
        with map_js_errors(self.settings.bucket):
            try:
                return await action(kv)
            except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError):
                # The stream behind the bucket is gone (writes get no stream response,
                # direct gets no responders): bind or create it again, once.
                self._kv = None
                kv = await self.open()
                return await action(kv)

    async def read(self, name: str) -> tuple[int, bytes | None]:
        """The revision and value of stored key ``name``; ``None`` when absent or deleted.

        The revision of a deleted key is its delete marker's, which is what a CAS write
        must name.
        """
        import nats.js.errors

        async def get(kv: KeyValue) -> tuple[int, bytes | None]:
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError as exc:
                marker = exc.entry
                return (int(marker.revision or 0) if marker is not None else 0), None
            return int(entry.revision or 0), bytes(entry.value or b"")

        return await self._with_bucket(get)

    async def load(self, key: str) -> tuple[int, Stored | None]:
        """Read and decode wasmCloud key ``key``; expired values read as ``None``."""
        revision, data = await self.read(storage_key(key))
        if data is None:
            return revision, None
        value = unpack_value(data, key)
        return revision, (None if value.expired(now_ms()) else value)

    async def put(self, key: str, value: Stored) -> None:
        """Store ``value`` under ``key`` unconditionally."""
        name, data = storage_key(key), self._pack(key, value)

        async def put(kv: KeyValue) -> None:
            await kv.put(name, data)

        async with self.key_lock(name):
            await self._with_bucket(put)

    async def mutate(self, key: str, change: Mutation[T]) -> T:
        """Apply ``change`` to the value of ``key`` atomically and return its result.

        ``change(current)`` returns ``(new, result)``: ``new`` is the value to store,
        ``None`` to delete the key, or :data:`KEEP`. The write names the revision that was
        read; if another writer got in between, the read and ``change`` are repeated, up
        to ``cas_attempts`` times with a short random backoff.
        """
        import nats.js.errors

        name = storage_key(key)
        async with self.key_lock(name):
            for attempt in range(self.settings.cas_attempts):
                revision, data = await self.read(name)
                current = None if data is None else unpack_value(data, key)
                if current is not None and current.expired(now_ms()):
                    current = None
                new, result = change(current)
                if isinstance(new, Keep) or (new is None and data is None):
                    return result
                payload = None if new is None else self._pack(key, new)
                try:
                    await self._write(name, revision, payload)
                except nats.js.errors.APIError as exc:
                    if not _wrong_last_sequence(exc):
                        raise
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
                    continue
                return result
        raise CapabilityTimeout(
            f"key {key!r} changed under us {self.settings.cas_attempts} times in a row; try again"
        )

    async def _write(self, name: str, revision: int, payload: bytes | None) -> None:
        """Write (or delete, for ``None``) ``name`` if its revision is still ``revision``."""

        async def write(kv: KeyValue) -> None:
            if payload is None:
                await kv.delete(name, last=revision)
            else:
                await kv.update(name, payload, last=revision)

        await self._with_bucket(write)

    def _pack(self, key: str, value: Stored) -> bytes:
        if len(value.items) > self.settings.max_items:
            raise CapabilityError(
                f"{value.kind} {key!r} would have {len(value.items)} items, "
                f"the limit is {self.settings.max_items}"
            )
        data = pack_value(value)
        if len(data) > self.settings.max_value_bytes:
            raise CapabilityError(
                f"the value of key {key!r} would be {len(data)} bytes, "
                f"the limit is {self.settings.max_value_bytes}"
            )
        return data


def _wrong_last_sequence(exc: BaseException) -> bool:
    """True for the JetStream error of a compare-and-set that lost the race."""
    import nats.js.errors

    return isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or (
        getattr(exc, "err_code", None) in _WRONG_LAST_SEQUENCE
    )


@contextlib.contextmanager
def map_js_errors(bucket: str) -> Iterator[None]:
    """Turn nats-py JetStream errors into capability errors naming the bucket.

    A wrong-last-sequence error passes through untouched: the CAS loop handles it.
    """
    import nats.errors
    import nats.js.errors

    try:
        yield
    except CapabilityError:
        raise
    except nats.js.errors.APIError as exc:
        # nats-py's KV errors skip APIError.__init__: err_code may not exist at all.
        code = getattr(exc, "err_code", None)
        if _wrong_last_sequence(exc):
            raise
        if code == _MAX_BYTES_EXCEEDED:
            raise CapabilityUnavailable(f"the keyvalue store (bucket {bucket}) is full") from exc
        if code == _MESSAGE_TOO_LARGE:
            raise CapabilityError(f"the value is larger than bucket {bucket} accepts") from exc
        reason = getattr(exc, "description", None) or type(exc).__name__
        raise CapabilityUnavailable(
            f"JetStream refused the operation on bucket {bucket}: {reason}"
        ) from exc
    except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as exc:
        raise CapabilityUnavailable(
            f"JetStream is not available on the local NATS server (bucket {bucket})"
        ) from exc
    except nats.errors.TimeoutError as exc:
        raise CapabilityTimeout(f"JetStream did not answer in time (bucket {bucket})") from exc
    except nats.errors.Error as exc:
        raise CapabilityUnavailable(f"local NATS unavailable: {exc}") from exc
