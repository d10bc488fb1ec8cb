"""agent.runtime.builtins: wasmcloud:builtin:logging and :numbergen, and the no-link error."""

from __future__ import annotations

import logging
import uuid

import msgpack
import pytest

from agent.errors import HostCallError
from agent.runtime.builtins import LOGGING, NUMBERGEN, BuiltinHostCalls


def pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value)
    return packed


async def test_logging_writes_to_the_actor_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.actor")
    handler = BuiltinHostCalls()
    for operation in ("Logging.WriteLog", "WriteLog"):
        payload = pack({"level": "warn", "text": f"via {operation}"})
        assert await handler("M1", "default", LOGGING, operation, payload) == b""
    records = [r for r in caplog.records if r.name == "agent.actor"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, "actor M1: via Logging.WriteLog"),
        (logging.WARNING, "actor M1: via WriteLog"),
    ]
    with pytest.raises(HostCallError, match="not msgpack"):
        await handler("M1", "default", LOGGING, "WriteLog", b"\xc1")
    with pytest.raises(HostCallError, match="string 'level' and 'text'"):
        await handler("M1", "default", LOGGING, "WriteLog", pack({"level": 3}))
    with pytest.raises(HostCallError, match="must be a msgpack map"):
        await handler("M1", "default", LOGGING, "WriteLog", pack([1]))


async def test_numbergen() -> None:
    handler = BuiltinHostCalls()
    guid = msgpack.unpackb(await handler("M", "default", NUMBERGEN, "NumberGen.GenerateGuid", b""))
    assert uuid.UUID(guid).version == 4
    value = msgpack.unpackb(await handler("M", "default", NUMBERGEN, "Random32", b""))
    assert 0 <= value < 2**32
    seen = {
        msgpack.unpackb(
            await handler(
                "M", "d", NUMBERGEN, "NumberGen.RandomInRange", pack({"min": 3, "max": 5})
            )
        )
        for _ in range(200)
    }
    assert seen == {3, 4, 5}  # inclusive on both ends
    for bad in ({"min": 5, "max": 3}, {"min": -1, "max": 3}, {"min": "a", "max": 3}):
        with pytest.raises(HostCallError, match="RandomInRange"):
            await handler("M", "d", NUMBERGEN, "RandomInRange", pack(bad))
    with pytest.raises(HostCallError, match="has no operation"):
        await handler("M", "d", NUMBERGEN, "NumberGen.Nope", b"")


async def test_anything_else_has_no_link_unless_a_fallback_serves_it() -> None:
    with pytest.raises(HostCallError) as caught:
        await BuiltinHostCalls()("M", "default", "wasmcloud:keyvalue", "Get", b"")
    assert str(caught.value) == "no link exists for wasmcloud:keyvalue on binding default"

    async def fallback(actor: str, binding: str, ns: str, op: str, payload: bytes) -> bytes:
        return f"{actor}/{binding}/{ns}/{op}".encode() + payload

    handler = BuiltinHostCalls(fallback)
    assert await handler("M", "b", "x:y", "Op", b"!") == b"M/b/x:y/Op!"
