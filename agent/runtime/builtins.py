"""Host calls every wasmCloud host serves itself: ``wasmcloud:builtin:logging`` and
``wasmcloud:builtin:numbergen``, and the handler protocol the sandbox calls for host calls.

Payloads are msgpack with named maps, as wasmbus-rpc actors send them: logging takes
``{"level", "text"}`` and answers nothing; numbergen answers a msgpack string (GUID) or
u32. Operation names are accepted with and without their interface prefix
(``Logging.WriteLog`` / ``WriteLog``), as the Rust and OTP hosts did.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgpack

from agent.errors import HostCallError

__all__ = [
    "LOGGING",
    "NUMBERGEN",
    "BuiltinHostCalls",
    "HostCallHandler",
    "no_link_error",
]

LOGGING = "wasmcloud:builtin:logging"
NUMBERGEN = "wasmcloud:builtin:numbergen"
ACTOR_LOGGER = "agent.actor"

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_U32_MAX = 0xFFFFFFFF


class HostCallHandler(Protocol):
    """What the sandbox awaits when a guest calls ``__host_call``.

    Return the response bytes, or raise (preferably :class:`HostCallError`) to fail the
    host call: the exception's message is what the guest sees as the host error.
    """

    def __call__(
        self, actor_id: str, binding: str, namespace: str, operation: str, payload: bytes
    ) -> Awaitable[bytes]: ...


def no_link_error(namespace: str, binding: str) -> HostCallError:
    """The error a host call gets when nothing serves its namespace and binding."""
    return HostCallError(f"no link exists for {namespace} on binding {binding}")


class BuiltinHostCalls:
    """The default :class:`HostCallHandler`: the builtins, then ``fallback`` if given.

    Without a fallback any other namespace fails with "no link exists for <namespace> on
    binding <binding>". Actor log lines go to the ``agent.actor`` logger.
    """

    def __init__(
        self,
        fallback: HostCallHandler | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self._fallback = fallback
        self._log = logger or logging.getLogger(ACTOR_LOGGER)
        self._ops: dict[tuple[str, str], Callable[[str, bytes], bytes]] = {}
        for name, func in (
            ("WriteLog", self._write_log),
            ("Logging.WriteLog", self._write_log),
        ):
            self._ops[(LOGGING, name)] = func
        for name, func in (
            ("GenerateGuid", _generate_guid),
            ("Random32", _random_32),
            ("RandomInRange", _random_in_range),
        ):
            self._ops[(NUMBERGEN, name)] = func
            self._ops[(NUMBERGEN, f"NumberGen.{name}")] = func

    async def __call__(
        self, actor_id: str, binding: str, namespace: str, operation: str, payload: bytes
    ) -> bytes:
        """Serve one host call (see :class:`HostCallHandler`)."""
        func = self._ops.get((namespace, operation))
        if func is not None:
            return func(actor_id, payload)
        if namespace in (LOGGING, NUMBERGEN):
            raise HostCallError(f"{namespace} has no operation {operation}")
        if self._fallback is not None:
            return await self._fallback(actor_id, binding, namespace, operation, payload)
        raise no_link_error(namespace, binding)

    def _write_log(self, actor_id: str, payload: bytes) -> bytes:
        entry = _decode_map(payload, LOGGING)
        level, text = entry.get("level"), entry.get("text")
        if not isinstance(level, str) or not isinstance(text, str):
            raise HostCallError(f"{LOGGING}: a log entry needs string 'level' and 'text'")
        self._log.log(_LEVELS.get(level.lower(), logging.INFO), "actor %s: %s", actor_id, text)
        return b""


def _decode_map(payload: bytes, namespace: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise HostCallError(f"{namespace}: the payload is not msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise HostCallError(f"{namespace}: the payload must be a msgpack map")
    return value


def _generate_guid(actor_id: str, payload: bytes) -> bytes:
    result: bytes = msgpack.packb(str(uuid.uuid4()))
    return result


def _random_32(actor_id: str, payload: bytes) -> bytes:
    result: bytes = msgpack.packb(secrets.randbits(32))
    return result


def _random_in_range(actor_id: str, payload: bytes) -> bytes:
    limits = _decode_map(payload, NUMBERGEN)
    low, high = limits.get("min"), limits.get("max")
    if not isinstance(low, int) or not isinstance(high, int):
        raise HostCallError(f"{NUMBERGEN}: RandomInRange needs integer 'min' and 'max'")
    if not 0 <= low <= high <= _U32_MAX:
        raise HostCallError(f"{NUMBERGEN}: RandomInRange needs 0 <= min <= max <= 2^32-1")
    result: bytes = msgpack.packb(low + secrets.randbelow(high - low + 1))  # inclusive range
    return result
