"""Actor references and the local module cache.

A reference says where an actor's module comes from:

* ``file:///opt/actors/echo.wasm`` (or a bare absolute path) — a file on the device, inside
  one of the configured roots (``[actors] file_roots``): references arrive over the
  lattice, so a path is hostile until proven otherwise (see :func:`read_module_file`);
* ``nats-os://BUCKET/OBJECT`` — an object in a NATS JetStream object store, fetched through
  the leaf node, so a fleet publishes an actor once in the cloud and devices pull it;
  ``?domain=D`` names the JetStream domain that holds the bucket (for example the hub's
  domain when the bucket lives in the cloud account; without it the device's own);
* ``sha256:<hex>`` — a module already in the local cache.

Every fetched module is stored in a content-addressed cache (``<data>/modules/<sha256>``),
so a restarted agent loads its actors offline. OCI registry references are not supported:
the agent has no registry client, and devices on bad links should not pull images.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ActorRefError, StateError
from agent.fsutil import write_atomic

if TYPE_CHECKING:
    from agent.lattice.natsclient import NatsClient

__all__ = [
    "MODULE_BUCKET",
    "ActorRef",
    "FetchPolicy",
    "ModuleCache",
    "fetch_module",
    "parse_ref",
    "read_module_file",
]

MAX_MODULE_BYTES = 16 * 1024 * 1024
MAX_REF_LENGTH = 1024
# The device's own object store bucket for modules the local CLI uploads.
MODULE_BUCKET = "lattice-edge-modules"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Where modules may be read from and how big they may be."""

    file_roots: tuple[Path, ...] = ()
    max_bytes: int = MAX_MODULE_BYTES


@dataclass(frozen=True, slots=True)
class ActorRef:
    """A parsed actor reference."""

    scheme: str  # "file", "nats-os" or "sha256"
    location: str  # path, object name or digest
    bucket: str | None = None
    domain: str | None = None

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.location}"
        if self.scheme == "sha256":
            return f"sha256:{self.location}"
        query = f"?domain={self.domain}" if self.domain else ""
        return f"nats-os://{self.bucket}/{self.location}{query}"


def parse_ref(text: str) -> ActorRef:
    """Parse a reference; the error says which forms are understood."""
    if len(text) > MAX_REF_LENGTH:
        raise ActorRefError(f"an actor reference may be at most {MAX_REF_LENGTH} characters")
    if _CONTROL.search(text):
        raise ActorRefError("an actor reference must not contain control characters")
    ref = text.strip()
    if ref.startswith("/"):
        return ActorRef("file", ref)
    if ref.startswith("sha256:"):
        digest = ref.removeprefix("sha256:").lower()
        if not _SHA256.match(digest):
            raise ActorRefError(f"'{text}': a sha256 reference needs 64 hex digits")
        return ActorRef("sha256", digest)
    parsed = urllib.parse.urlsplit(ref)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        if parsed.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ActorRefError(f"'{text}': a file reference needs an absolute path")
        return ActorRef("file", path)
    if parsed.scheme == "nats-os":
        bucket, name = parsed.netloc, urllib.parse.unquote(parsed.path.lstrip("/"))
        if not _BUCKET.match(bucket) or not name:
            raise ActorRefError(f"'{text}': expected nats-os://BUCKET/OBJECT[?domain=D]")
        query = urllib.parse.parse_qs(parsed.query)
        unknown = set(query) - {"domain"}
        if unknown:
            raise ActorRefError(f"'{text}': unknown parameter {sorted(unknown)[0]}")
        domain = query.get("domain", [None])[0]
        if domain is not None and not _DOMAIN.match(domain):
            raise ActorRefError(f"'{text}': a JetStream domain is letters, digits, '-' or '_'")
        if _CONTROL.search(name) or len(name) > 255:
            raise ActorRefError(f"'{text}': the object name is not acceptable")
        return ActorRef("nats-os", name, bucket=bucket, domain=domain)
    raise ActorRefError(
        f"'{text}' is not a reference this host understands: use file:///path.wasm, "
        "nats-os://BUCKET/OBJECT[?domain=D] or sha256:<digest> (OCI registries are not supported)"
    )


class ModuleCache:
    """Content-addressed module files: ``<dir>/<sha256>``. Blocking: call from a thread."""

    def __init__(self, directory: Path, *, max_bytes: int = MAX_MODULE_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def put(self, module: bytes) -> str:
        """Store ``module``; return its SHA-256 (hex)."""
        digest = hashlib.sha256(module).hexdigest()
        path = self.directory / digest
        if not path.exists():
            try:
                write_atomic(path, module)
            except OSError as exc:
                raise StateError(
                    f"cannot cache module {digest[:12]}: {exc.strerror or exc}"
                ) from exc
        return digest

    def get(self, digest: str) -> bytes | None:
        """The module with ``digest``, or None; a damaged file counts as absent."""
        if not _SHA256.match(digest):
            return None
        try:
            module = _read_regular(self.directory / digest, self.max_bytes)
        except (OSError, ActorRefError):
            return None
        return module if hashlib.sha256(module).hexdigest() == digest else None


def _within(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def read_module_file(location: str, policy: FetchPolicy) -> bytes:
    """Read a ``file://`` module, treating the path as hostile. Blocking: use a thread.

    The path must lie inside ``policy.file_roots`` — checked on the text first, so a
    refused path is never touched and the answer says nothing about whether it exists —
    and again after resolving symlinks. The file is opened without following a final
    symlink and without blocking (a FIFO with no writer cannot hang us), must be a
    regular file (no devices), and is refused when over ``policy.max_bytes`` before any
    byte is read. Errors never carry the file's contents.
    """
    outside = ActorRefError(
        f"file://{location} is outside the directories actors may be read from "
        "(actors.file_roots); upload the module instead ('lattice-edge actor start FILE')"
    )
    lexical = os.path.normpath(location)
    roots = [os.path.normpath(str(root)) for root in policy.file_roots]
    if not os.path.isabs(lexical) or not _within(lexical, roots):
        raise outside
    real = os.path.realpath(lexical)
    if not _within(real, [os.path.realpath(root) for root in roots]):
        raise outside
    return _read_regular(Path(real), policy.max_bytes, shown=f"file://{location}")


def _read_regular(path: Path, max_bytes: int, *, shown: str | None = None) -> bytes:
    name = shown or str(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ActorRefError(f"cannot read {name}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ActorRefError(f"cannot read {name}: not a regular file")
        if info.st_size > max_bytes:
            raise ActorRefError(f"{name}: {info.st_size} bytes is over the {max_bytes} limit")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read it
        raise ActorRefError(f"{name}: over the {max_bytes} byte limit")
    return data


async def fetch_module(
    ref: ActorRef, nats_client: NatsClient | None, policy: FetchPolicy, *, timeout: float = 30.0
) -> bytes:
    """Read a module from where ``ref`` points (``sha256`` refs are the caller's cache)."""
    if ref.scheme == "file":
        return await asyncio.to_thread(read_module_file, ref.location, policy)
    if ref.scheme == "nats-os":
        return await _fetch_object(ref, nats_client, policy.max_bytes, timeout)
    raise ActorRefError(f"{ref} is not in the local module cache")


async def _fetch_object(
    ref: ActorRef, nats_client: NatsClient | None, max_bytes: int, timeout: float
) -> bytes:
    import nats.errors
    import nats.js.errors

    if nats_client is None:
        raise ActorRefError(f"cannot fetch {ref}: not connected to NATS")
    assert ref.bucket is not None  # parse_ref gives every nats-os reference a bucket
    try:
        js = nats_client.jetstream(domain=ref.domain, timeout=timeout)
        store = await js.object_store(ref.bucket)
        info = await store.get_info(ref.location)
        if info.size is not None and info.size > max_bytes:
            raise ActorRefError(f"{ref}: {info.size} bytes is over the {max_bytes} limit")
        result = await asyncio.wait_for(store.get(ref.location), timeout)
    except (nats.js.errors.Error, nats.errors.Error, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ActorRefError(f"cannot fetch {ref}: {reason}") from exc
    data = result.data
    if not isinstance(data, bytes | bytearray):
        raise ActorRefError(f"cannot fetch {ref}: the object has no data")
    return bytes(data)
