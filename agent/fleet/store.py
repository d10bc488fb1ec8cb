"""The fleet's state in a JetStream KV bucket on the hub, with optimistic concurrency.

Records are JSON objects under dotted keys (``token.<id>``, ``device.<host>``,
``deploy.<name>``, ``host.<host>``, ``status.<name>.<host>``, ``slot.<name>.<n>``). Every
change that must not happen twice — spending a token, taking a rollout lease — is a
``create`` (only if absent) or an ``update`` against the revision that was read: when two
``fleet serve`` processes race, exactly one write succeeds and the other sees
:class:`Conflict` and re-reads. JetStream acknowledges a write only once it is stored, so
the service replies only after its effect is durable.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from agent.errors import FleetStoreError
from agent.fleet import subjects

__all__ = ["Conflict", "FleetStore", "Record", "map_store_errors"]

HISTORY = 5
MAX_VALUE_BYTES = 256 * 1024


class Conflict(FleetStoreError):
    """The record changed (or appeared) since it was read: someone else won the race."""


@dataclass(frozen=True, slots=True)
class Record:
    """A KV value and the revision it was read at."""

    key: str
    value: dict[str, Any]
    revision: int


@contextlib.contextmanager
def map_store_errors(what: str) -> Iterator[None]:
    """Turn nats-py's JetStream errors into :class:`FleetStoreError` (Conflict for races)."""
    import nats.errors
    import nats.js.errors

    try:
        yield
    except nats.js.errors.KeyWrongLastSequenceError as exc:
        raise Conflict(f"{what}: changed concurrently") from exc
    except (nats.js.errors.Error, nats.errors.Error, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise FleetStoreError(f"{what}: {reason}") from exc


def _decode(key: str, raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None  # a damaged record counts as absent; its key is logged by the caller
    return value if isinstance(value, dict) else None


def _encode(key: str, value: dict[str, Any]) -> bytes:
    data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_VALUE_BYTES:
        raise FleetStoreError(f"the record {key} would be {len(data)} bytes; too large")
    return data


class FleetStore:
    """One fleet's KV bucket. ``open`` creates it on first use (idempotent across processes)."""

    def __init__(self, nats_client: Any, fleet_id: str) -> None:
        self._nats = nats_client
        self.bucket = subjects.kv_bucket(fleet_id)
        self._kv: Any = None

    async def open(self) -> FleetStore:
        """Bind to the bucket, creating it when it does not exist yet."""
        import nats.js.errors
        from nats.js.api import KeyValueConfig

        js = self._nats.jetstream()
        with map_store_errors(f"opening the KV bucket {self.bucket}"):
            try:
                self._kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(bucket=self.bucket, history=HISTORY)
                self._kv = await js.create_key_value(config)
        return self

    @property
    def kv(self) -> Any:
        """The nats-py KeyValue object (after :meth:`open`)."""
        if self._kv is None:
            raise FleetStoreError("the fleet store is not open")
        return self._kv

    async def get(self, key: str) -> Record | None:
        """The record at ``key``, or None when absent or deleted."""
        import nats.js.errors

        with map_store_errors(f"reading {key}"):
            try:
                entry = await self.kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
        value = _decode(key, entry.value)
        return None if value is None else Record(key, value, int(entry.revision))

    async def create(self, key: str, value: dict[str, Any]) -> int:
        """Write ``key`` only if it does not exist; Conflict otherwise."""
        with map_store_errors(f"creating {key}"):
            return int(await self.kv.create(key, _encode(key, value)))

    async def update(self, key: str, value: dict[str, Any], last: int) -> int:
        """Write ``key`` only if it is still at revision ``last``; Conflict otherwise."""
        with map_store_errors(f"updating {key}"):
            return int(await self.kv.update(key, _encode(key, value), last=last))

    async def put(self, key: str, value: dict[str, Any]) -> int:
        """Write ``key`` unconditionally (for records only one writer owns)."""
        with map_store_errors(f"writing {key}"):
            return int(await self.kv.put(key, _encode(key, value)))

    async def delete(self, key: str, last: int | None = None) -> None:
        """Delete ``key`` (against ``last`` when given)."""
        with map_store_errors(f"deleting {key}"):
            await self.kv.delete(key, last=last)

    async def scan(self, prefix: str) -> list[Record]:
        """Every live record whose key starts with ``prefix.``, by key."""
        records: list[Record] = []
        async for record in self._iterate(f"{prefix}.>", stop_at_end=True):
            if isinstance(record, Record):
                records.append(record)
        return sorted(records, key=lambda r: r.key)

    async def watch(self, pattern: str) -> AsyncIterator[Record | str | None]:
        """Current records matching ``pattern``, then every change: a Record for a value,
        the key (a str) for a deletion, and one None when the initial values are done."""
        async for item in self._iterate(pattern, stop_at_end=False):
            yield item

    async def _iterate(
        self, pattern: str, *, stop_at_end: bool
    ) -> AsyncIterator[Record | str | None]:
        import nats.errors

        with map_store_errors(f"watching {pattern}"):
            watcher = await self.kv.watch(pattern)
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=60 if not stop_at_end else 10)
                except nats.errors.TimeoutError:
                    if stop_at_end:
                        raise FleetStoreError(f"listing {pattern} timed out") from None
                    continue  # a quiet bucket: keep watching
                if entry is None:
                    if stop_at_end:
                        return
                    yield None
                    continue
                if entry.operation in ("DEL", "PURGE"):
                    if not stop_at_end:
                        yield str(entry.key)
                    continue
                value = _decode(entry.key, entry.value)
                if value is not None:
                    yield Record(str(entry.key), value, int(entry.revision))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
