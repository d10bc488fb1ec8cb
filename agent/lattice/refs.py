"""Actor references and the local module cache.

A reference says where an actor's module comes from:

* ``file:///opt/actors/echo.wasm`` (or a bare absolute path) — a file on the device;
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

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ActorRefError
from agent.fsutil import write_atomic

__all__ = ["ActorRef", "ModuleCache", "fetch_module", "parse_ref"]

MAX_MODULE_BYTES = 16 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
        return ActorRef("nats-os", name, bucket=bucket, domain=domain)
    raise ActorRefError(
        f"'{text}' is not a reference this host understands: use file:///path.wasm, "
        "nats-os://BUCKET/OBJECT[?domain=D] or sha256:<digest> (OCI registries are not supported)"
    )


class ModuleCache:
    """Content-addressed module files: ``<dir>/<sha256>``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, module: bytes) -> str:
        """Store ``module``; return its SHA-256 (hex)."""
        digest = hashlib.sha256(module).hexdigest()
        path = self.directory / digest
        if not path.exists():
            write_atomic(path, module)
        return digest

    def get(self, digest: str) -> bytes | None:
        """The module with ``digest``, or None; a damaged file counts as absent."""
        if not _SHA256.match(digest):
            return None
        try:
            module = (self.directory / digest).read_bytes()
        except OSError:
            return None
        return module if hashlib.sha256(module).hexdigest() == digest else None


async def fetch_module(ref: ActorRef, nats_client: Any, *, timeout: float = 30.0) -> bytes:
    """Read a module from where ``ref`` points (``sha256`` refs are the caller's cache)."""
    if ref.scheme == "file":
        try:
            size = Path(ref.location).stat().st_size
            if size > MAX_MODULE_BYTES:
                raise ActorRefError(f"{ref}: {size} bytes is over the {MAX_MODULE_BYTES} limit")
            return Path(ref.location).read_bytes()
        except OSError as exc:
            raise ActorRefError(f"cannot read {ref}: {exc.strerror or exc}") from exc
    if ref.scheme == "nats-os":
        return await _fetch_object(ref, nats_client, timeout)
    raise ActorRefError(f"{ref} is not in the local module cache")


async def _fetch_object(ref: ActorRef, nats_client: Any, timeout: float) -> bytes:
    import asyncio

    import nats.errors
    import nats.js.errors

    if nats_client is None:
        raise ActorRefError(f"cannot fetch {ref}: not connected to NATS")
    try:
        js = nats_client.jetstream(domain=ref.domain, timeout=timeout)
        store = await js.object_store(ref.bucket)
        info = await store.get_info(ref.location)
        if info.size is not None and info.size > MAX_MODULE_BYTES:
            raise ActorRefError(f"{ref}: {info.size} bytes is over the {MAX_MODULE_BYTES} limit")
        result = await asyncio.wait_for(store.get(ref.location), timeout)
    except (nats.js.errors.Error, nats.errors.Error, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ActorRefError(f"cannot fetch {ref}: {reason}") from exc
    data = result.data
    if not isinstance(data, bytes | bytearray):
        raise ActorRefError(f"cannot fetch {ref}: the object has no data")
    return bytes(data)
