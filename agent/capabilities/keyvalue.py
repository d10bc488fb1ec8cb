"""``wasmcloud:keyvalue`` on a JetStream KV bucket of the local leaf node.

Operations, inputs and outputs follow wasmCloud/interfaces:keyvalue/keyvalue.smithy
(service ``KeyValue`` 0.1.1) and its generated keyvalue/rust/src/keyvalue.rs; semantics
that the interface leaves open follow the Redis provider
(wasmCloud/capability-providers:kvredis/src/main.rs). Actors send ``KeyValue.<Op>``; the
bare ``<Op>`` is accepted too. A "string" input is a msgpack str; ``{"key": ...}`` (and
``{"listName"|"setName": ...}`` where it fits) is accepted as well.

===================  ========================================  ===========================
operation            input                                     output
===================  ========================================  ===========================
Get                  key: str                                  {value: str, exists: bool}
Set                  {key: str, value: str, expires: u32}      (empty)
Del                  key: str                                  bool (true if it existed)
Contains             key: str                                  bool
Increment            {key: str, value: i32}                    i32 (the new value)
ListAdd              {listName: str, value: str}               u32 (the new length)
ListClear            listName: str                             bool (true if it existed)
ListDel              {listName: str, value: str}               bool (true if removed)
ListRange            {listName: str, start: i32, stop: i32}    [str]
SetAdd               {setName: str, value: str}                u32 (1 added, 0 present)
SetDel               {setName: str, value: str}                u32 (1 removed, 0 absent)
SetQuery             setName: str                              [str]
SetIntersection      [str] (set names)                         [str]
SetUnion             [str] (set names)                         [str]
SetClear             setName: str                              bool (true if it existed)
===================  ========================================  ===========================

As with Redis: ``expires`` is in seconds, 0 for never (it may be omitted); ``Increment``
treats a missing key as 0, fails on a value that is not an integer and on i32 overflow,
and is atomic (a compare-and-set on the KV revision, retried on conflict); ``ListRange``
indices are inclusive and may be negative (from the end); ``ListDel`` removes the first
match; a list or set that becomes empty is deleted; a missing set is empty in
``SetUnion``/``SetIntersection``; set members keep insertion order. Using a key as the
wrong kind (``Get`` on a list, ``ListAdd`` on a set) fails, and so do ``ListClear`` and
``SetClear`` on a key of another kind (Redis would delete it). Every actor shares one key
space, as every actor linked to one Redis did. Storage layout, key encoding and expiry:
:mod:`agent.capabilities.kvstore`. ``Keys`` (added in the interface later) is not served.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from agent.capabilities.base import operation_name
from agent.capabilities.codec import (
    I32_MAX,
    I32_MIN,
    U32_MAX,
    Struct,
    decode,
    decode_string_or_field,
    decode_struct,
    encode,
    string_list,
)
from agent.capabilities.kvstore import KEEP, Bucket, Keep, KeyValueSettings, Stored, now_ms
from agent.errors import CapabilityError, PayloadError, UnknownOperation

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["KEYVALUE", "KeyValueCapability", "KeyValueSettings"]

KEYVALUE: Final = "wasmcloud:keyvalue"
_INTERFACE: Final = "KeyValue"
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
_MAX_SET_NAMES: Final = 64

_Handler = Callable[[bytes, str], Awaitable[Any]]


class KeyValueCapability:
    """``wasmcloud:keyvalue`` over a connected nats-py client to the local leaf node.

    The bucket (``settings.bucket``, default ``LATTICE_EDGE_KV``) is created on first use;
    call :meth:`open` at start-up to create it early and fail fast without JetStream.
    """

    contract_id: str = KEYVALUE

    def __init__(self, client: Client, settings: KeyValueSettings | None = None) -> None:
        self.settings = settings or KeyValueSettings()
        self._bucket = Bucket(client, self.settings)
        self._ops: dict[str, _Handler] = {
            "Get": self._get,
            "Set": self._set,
            "Del": self._del,
            "Contains": self._contains,
            "Increment": self._increment,
            "ListAdd": self._list_add,
            "ListClear": self._list_clear,
            "ListDel": self._list_del,
            "ListRange": self._list_range,
            "SetAdd": self._set_add,
            "SetDel": self._set_del,
            "SetQuery": self._set_query,
            "SetIntersection": self._set_intersection,
            "SetUnion": self._set_union,
            "SetClear": self._set_clear,
        }

    async def open(self) -> None:
        """Bind the bucket, creating it if it is missing.

        Raises:
            CapabilityUnavailable: JetStream is not enabled or refused the bucket.
        """
        await self._bucket.open()

    async def handle(self, actor_id: str, operation: str, payload: bytes) -> bytes:
        """Serve one ``KeyValue.*`` operation (table in the module docstring)."""
        name = operation_name(operation, _INTERFACE)
        handler = self._ops.get(name)
        if handler is None:
            supported = ", ".join(f"{_INTERFACE}.{op}" for op in self._ops)
            raise UnknownOperation(
                f"{KEYVALUE} has no operation {operation!r} (supported: {supported})"
            )
        where = f"{KEYVALUE} {_INTERFACE}.{name}"
        try:
            result = await handler(payload, where)
        except CapabilityError as exc:
            if str(exc).startswith(where):
                raise
            # Storage errors do not know the operation; the guest should see it.
            raise type(exc)(f"{where}: {exc}") from exc
        # An operation without output (Set) answers with no bytes, not an encoded nil.
        return b"" if result is None else encode(result)

    # --- inputs ------------------------------------------------------------------

    def _key(self, key: str, where: str, what: str = "key") -> str:
        if not key:
            raise PayloadError(f"{where}: {what} is empty")
        if len(key.encode()) > self.settings.max_key_bytes:
            raise PayloadError(
                f"{where}: {what} is longer than {self.settings.max_key_bytes} bytes"
            )
        return key

    def _string_input(self, payload: bytes, where: str, *fields: str) -> str:
        return self._key(decode_string_or_field(payload, where, *fields), where, fields[0])

    def _struct_key(self, struct: Struct, field: str, where: str) -> str:
        return self._key(struct.string(field), where, field)

    # --- strings -----------------------------------------------------------------

    async def _get(self, payload: bytes, where: str) -> dict[str, Any]:
        key = self._string_input(payload, where, "key")
        _, value = await self._bucket.load(key)
        if value is None:
            return {"value": "", "exists": False}
        return {"value": _expect(value, "string", key).text, "exists": True}

    async def _set(self, payload: bytes, where: str) -> None:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "key", where)
        text = args.string("value")
        expires = args.integer("expires", 0, U32_MAX, 0)
        deadline = now_ms() + expires * 1000 if expires else 0
        await self._bucket.put(key, Stored("string", text, expires_at_ms=deadline))

    async def _del(self, payload: bytes, where: str) -> bool:
        key = self._string_input(payload, where, "key")
        return await self._bucket.mutate(key, lambda current: (None, current is not None))

    async def _contains(self, payload: bytes, where: str) -> bool:
        key = self._string_input(payload, where, "key")
        _, value = await self._bucket.load(key)
        return value is not None

    async def _increment(self, payload: bytes, where: str) -> int:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "key", where)
        delta = args.integer("value", I32_MIN, I32_MAX)

        def change(current: Stored | None) -> tuple[Stored, int]:
            base, expires = 0, 0
            if current is not None:
                text = _expect(current, "string", key).text
                if not _INTEGER.fullmatch(text):
                    raise CapabilityError(f"the value of key {key!r} is not an integer")
                base, expires = int(text), current.expires_at_ms
            total = base + delta
            if not I32_MIN <= total <= I32_MAX:
                raise CapabilityError(
                    f"incrementing key {key!r} ({base} + {delta}) would overflow an i32"
                )
            return Stored("string", str(total), expires_at_ms=expires), total

        return await self._bucket.mutate(key, change)

    # --- lists -------------------------------------------------------------------

    async def _list_add(self, payload: bytes, where: str) -> int:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "listName", where)
        value = args.string("value")

        def change(current: Stored | None) -> tuple[Stored, int]:
            items = (*_items(current, "list", key), value)
            return Stored("list", items=items), len(items)

        return await self._bucket.mutate(key, change)

    async def _list_clear(self, payload: bytes, where: str) -> bool:
        key = self._string_input(payload, where, "listName", "key")
        return await self._clear(key, "list")

    async def _list_del(self, payload: bytes, where: str) -> bool:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "listName", where)
        value = args.string("value")

        def change(current: Stored | None) -> tuple[Stored | Keep | None, bool]:
            items = list(_items(current, "list", key))
            if value not in items:
                return KEEP, False
            items.remove(value)  # the first occurrence only, like LREM count 1
            return (Stored("list", items=tuple(items)) if items else None), True

        return await self._bucket.mutate(key, change)

    async def _list_range(self, payload: bytes, where: str) -> list[str]:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "listName", where)
        start = args.integer("start", I32_MIN, I32_MAX)
        stop = args.integer("stop", I32_MIN, I32_MAX)
        _, value = await self._bucket.load(key)
        items = _items(value, "list", key)
        return list(_inclusive_range(items, start, stop))

    # --- sets --------------------------------------------------------------------

    async def _set_add(self, payload: bytes, where: str) -> int:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "setName", where)
        value = args.string("value")

        def change(current: Stored | None) -> tuple[Stored | Keep, int]:
            items = _items(current, "set", key)
            if value in items:
                return KEEP, 0
            return Stored("set", items=(*items, value)), 1

        return await self._bucket.mutate(key, change)

    async def _set_del(self, payload: bytes, where: str) -> int:
        args = decode_struct(payload, where)
        key = self._struct_key(args, "setName", where)
        value = args.string("value")

        def change(current: Stored | None) -> tuple[Stored | Keep | None, int]:
            items = _items(current, "set", key)
            if value not in items:
                return KEEP, 0
            rest = tuple(item for item in items if item != value)
            return (Stored("set", items=rest) if rest else None), 1

        return await self._bucket.mutate(key, change)

    async def _set_query(self, payload: bytes, where: str) -> list[str]:
        key = self._string_input(payload, where, "setName", "key")
        _, value = await self._bucket.load(key)
        return list(_items(value, "set", key))

    async def _set_clear(self, payload: bytes, where: str) -> bool:
        key = self._string_input(payload, where, "setName", "key")
        return await self._clear(key, "set")

    async def _set_intersection(self, payload: bytes, where: str) -> list[str]:
        sets = await self._load_sets(payload, where)
        first, *others = sets
        return [item for item in first if all(item in other for other in others)]

    async def _set_union(self, payload: bytes, where: str) -> list[str]:
        sets = await self._load_sets(payload, where)
        return list(dict.fromkeys(item for members in sets for item in members))

    async def _load_sets(self, payload: bytes, where: str) -> list[tuple[str, ...]]:
        value = decode(payload, where)
        if isinstance(value, dict):
            names = Struct(value, where).string_list("keys")  # the older {keys} shape
        else:
            names = string_list(value, f"{where}: the input")
        if not names:
            raise PayloadError(f"{where}: needs at least one set name")
        if len(names) > _MAX_SET_NAMES:
            raise PayloadError(f"{where}: at most {_MAX_SET_NAMES} set names per call")
        keys = [self._key(name, where, "set name") for name in names]
        loaded = await asyncio.gather(*(self._bucket.load(key) for key in keys))
        return [_items(stored, "set", key) for key, (_, stored) in zip(keys, loaded, strict=True)]

    async def _clear(self, key: str, kind: str) -> bool:
        def change(current: Stored | None) -> tuple[None, bool]:
            if current is not None:
                _expect(current, kind, key)
            return None, current is not None

        return await self._bucket.mutate(key, change)


def _expect(value: Stored, kind: str, key: str) -> Stored:
    """``value`` if it is of ``kind``; otherwise the Redis WRONGTYPE error, in words."""
    if value.kind != kind:
        raise CapabilityError(f"key {key!r} holds a {value.kind}, not a {kind}")
    return value


def _items(value: Stored | None, kind: str, key: str) -> tuple[str, ...]:
    """The members of a list or set; a missing key is an empty one."""
    return () if value is None else _expect(value, kind, key).items


def _inclusive_range(items: tuple[str, ...], start: int, stop: int) -> tuple[str, ...]:
    """``LRANGE``: inclusive bounds, negative ones count from the end, clamped."""
    size = len(items)
    if start < 0:
        start += size
    if stop < 0:
        stop += size
    start = max(start, 0)
    stop = min(stop, size - 1)
    if start > stop:
        return ()
    return items[start : stop + 1]
