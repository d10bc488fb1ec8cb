"""Actor references and the content-addressed module cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import ActorRefError
from agent.lattice.refs import ActorRef, ModuleCache, fetch_module, parse_ref


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file:///opt/a.wasm", ActorRef("file", "/opt/a.wasm")),
        ("/opt/a.wasm", ActorRef("file", "/opt/a.wasm")),
        ("nats-os://ACTORS/echo.wasm", ActorRef("nats-os", "echo.wasm", bucket="ACTORS")),
        ("nats-os://ACTORS/v2/echo.wasm?domain=hub",
         ActorRef("nats-os", "v2/echo.wasm", bucket="ACTORS", domain="hub")),
        ("sha256:" + "A" * 64, ActorRef("sha256", "a" * 64)),
    ],
)  # fmt: skip
def test_parse(text: str, expected: ActorRef) -> None:
    assert parse_ref(text) == expected
    assert parse_ref(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("wasmcloud.azurecr.io/echo:0.3.4", "OCI registries are not supported"),
        ("file://relative/a.wasm", "absolute path"),
        ("nats-os://bad bucket/x", "nats-os://BUCKET/OBJECT"),
        ("nats-os://B/", "nats-os://BUCKET/OBJECT"),
        ("nats-os://B/x?tls=1", "unknown parameter tls"),
        ("sha256:xyz", "64 hex digits"),
    ],
)
def test_parse_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ActorRefError, match=fragment):
        parse_ref(text)


def test_cache_is_content_addressed(tmp_path: Path) -> None:
    cache = ModuleCache(tmp_path / "modules")
    digest = cache.put(b"\0asm module")
    assert digest == hashlib.sha256(b"\0asm module").hexdigest()
    assert cache.get(digest) == b"\0asm module"
    (tmp_path / "modules" / digest).write_bytes(b"tampered")
    assert cache.get(digest) is None  # a damaged file never passes for the module
    assert cache.get("../../etc/passwd") is None


async def test_fetch_file(tmp_path: Path) -> None:
    module = tmp_path / "a.wasm"
    module.write_bytes(b"\0asm")
    assert await fetch_module(parse_ref(f"file://{module}"), None) == b"\0asm"
    with pytest.raises(ActorRefError, match="cannot read"):
        await fetch_module(parse_ref(str(tmp_path / "missing.wasm")), None)
    with pytest.raises(ActorRefError, match="not connected"):
        await fetch_module(parse_ref("nats-os://B/x"), None)
