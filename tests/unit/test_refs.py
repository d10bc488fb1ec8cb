"""Actor references and the content-addressed module cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.errors import ActorRefError
from agent.lattice.refs import (
    ActorRef,
    FetchPolicy,
    ModuleCache,
    fetch_module,
    parse_ref,
    read_module_file,
)


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
    policy = FetchPolicy((tmp_path,))
    assert await fetch_module(parse_ref(f"file://{module}"), None, policy) == b"\0asm"
    with pytest.raises(ActorRefError, match="cannot read"):
        await fetch_module(parse_ref(str(tmp_path / "missing.wasm")), None, policy)
    with pytest.raises(ActorRefError, match="not connected"):
        await fetch_module(parse_ref("nats-os://B/x"), None, policy)


@pytest.mark.parametrize("ref", ["file:///tmp/a\u0000b", "file:///tmp/a\nb", "nats-os://B/\x1b[2J"])
def test_references_with_control_characters_are_refused(ref: str) -> None:
    # Regression: a NUL in a file:// reference was acknowledged, then crashed the agent.
    with pytest.raises(ActorRefError, match="control characters"):
        parse_ref(ref.encode().decode("unicode_escape"))


def test_paths_outside_the_roots_are_refused_without_being_touched(tmp_path: Path) -> None:
    root = tmp_path / "actors"
    root.mkdir()
    policy = FetchPolicy((root,))
    for path in ("/etc/shadow", "/etc/no-such-file", f"{root}/../escape.wasm", f"{root}x/a"):
        with pytest.raises(ActorRefError, match="outside the directories") as caught:
            read_module_file(path, policy)
        # The same answer whether or not the file exists: nothing to probe paths with.
        assert "No such file" not in str(caught.value)


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "actors"
    root.mkdir()
    secret = tmp_path / "secret.wasm"
    secret.write_bytes(b"\0asm secret")
    (root / "link.wasm").symlink_to(secret)
    with pytest.raises(ActorRefError, match="outside the directories"):
        read_module_file(str(root / "link.wasm"), FetchPolicy((root,)))


def test_devices_and_fifos_are_refused_without_blocking(tmp_path: Path) -> None:
    # Regression: file:///dev/zero grew the agent until the OOM killer; a FIFO with no
    # writer blocked the event loop.
    fifo = tmp_path / "pipe.wasm"
    os.mkfifo(fifo)
    with pytest.raises(ActorRefError, match="not a regular file"):
        read_module_file(str(fifo), FetchPolicy((tmp_path,)))
    with pytest.raises(ActorRefError, match="not a regular file"):
        read_module_file("/dev/zero", FetchPolicy((Path("/dev"),)))


def test_oversized_files_are_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.wasm"
    big.write_bytes(b"\0asm" + b"x" * 100)
    with pytest.raises(ActorRefError, match="over the 64 limit"):
        read_module_file(str(big), FetchPolicy((tmp_path,), max_bytes=64))
    assert read_module_file(str(big), FetchPolicy((tmp_path,), max_bytes=104)).startswith(b"\0asm")
