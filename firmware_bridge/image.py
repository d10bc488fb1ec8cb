"""MCUboot images: the header and TLV layout (pure), and signature checks with imgtool.

An image is ``header ‖ payload ‖ [protected TLVs] ‖ TLVs``; the header (little-endian)
starts with the magic ``0x96f3b83d`` and gives the header size, payload size, protected TLV
size and version. The TLV area holds the image hash (SHA-256 of header, payload and
protected TLVs; it is what MCUboot and mcumgr call the image's hash) and the signature.

:func:`inspect_image` checks the layout and the hash without any key; :func:`verify_image`
adds the signature check against the trusted keys, with ``imgtool`` (imported on first use,
not at start-up). Both run before a single byte goes to the device, and both name what
is wrong: ``unsigned``, ``untrusted``, ``tampered``, ``truncated`` or ``malformed``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, ImageRejected

__all__ = [
    "IMAGE_MAGIC",
    "ImageInfo",
    "TrustedKey",
    "inspect_image",
    "load_trusted_keys",
    "verify_image",
]

IMAGE_MAGIC = 0x96F3B83D
_HEADER = struct.Struct("<IIHHIIBBHI")  # magic, load, hdr, prot, size, flags, version
_TLV_INFO = struct.Struct("<HH")
_TLV = struct.Struct("<BBH")
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_SHA256 = 0x10
SIGNATURE_TLVS = {
    0x20: "rsa2048", 0x21: "ecdsa-p224", 0x22: "ecdsa", 0x23: "rsa3072", 0x24: "ed25519",
    0x25: "sig-pure",
}  # fmt: skip
MAX_IMAGE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the layout of an MCUboot image says (its signature not yet checked)."""

    version: str
    size: int  # bytes uploaded: the whole file
    image_hash: bytes  # the SHA-256 TLV: how the device names the image
    file_sha256: bytes  # SHA-256 of the whole file: the upload's resume key
    signatures: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "size": self.size,
            "hash": self.image_hash.hex(),
            "sha256": self.file_sha256.hex(),
        }


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key from ``firmware.trusted_keys``, loaded by imgtool."""

    path: Path
    key: Any  # an imgtool key object


def inspect_image(data: bytes) -> ImageInfo:
    """Check the header, the TLV area and the image hash; raise :class:`ImageRejected`."""
    if len(data) > MAX_IMAGE:
        raise ImageRejected(f"{len(data)} bytes is over the {MAX_IMAGE} limit", reason="malformed")
    if len(data) < _HEADER.size:
        raise ImageRejected(
            f"{len(data)} bytes is too short for an MCUboot header", reason="truncated"
        )
    magic, _load, header_size, protected_size, payload_size, _flags, major, minor, rev, build = (
        _HEADER.unpack_from(data)
    )
    if magic != IMAGE_MAGIC:
        raise ImageRejected("not an MCUboot image (bad header magic)", reason="malformed")
    if header_size < _HEADER.size:
        raise ImageRejected(f"header size {header_size} is too small", reason="malformed")
    hashed_end = header_size + payload_size + protected_size
    tlv_start = header_size + payload_size
    if protected_size:
        _check_room(data, tlv_start, _TLV_INFO.size)
        prot_magic, prot_total = _TLV_INFO.unpack_from(data, tlv_start)
        if prot_magic != TLV_PROT_INFO_MAGIC or prot_total != protected_size:
            raise ImageRejected("the protected TLV area is malformed", reason="malformed")
    _check_room(data, hashed_end, _TLV_INFO.size)
    info_magic, total = _TLV_INFO.unpack_from(data, hashed_end)
    if info_magic != TLV_INFO_MAGIC:
        raise ImageRejected("no TLV area after the payload (bad TLV magic)", reason="malformed")
    end = hashed_end + total
    _check_room(data, end, 0)
    image_hash: bytes | None = None
    signatures: list[str] = []
    offset = hashed_end + _TLV_INFO.size
    while offset < end:
        _check_room(data, offset, _TLV.size)
        kind, _pad, length = _TLV.unpack_from(data, offset)
        offset += _TLV.size
        if offset + length > end:
            raise ImageRejected("a TLV runs past the TLV area", reason="malformed")
        if kind == TLV_SHA256:
            image_hash = data[offset : offset + length]
        elif kind in SIGNATURE_TLVS:
            signatures.append(SIGNATURE_TLVS[kind])
        offset += length
    if image_hash is None or len(image_hash) != 32:
        raise ImageRejected("the image has no SHA-256 hash TLV", reason="malformed")
    if hashlib.sha256(data[:hashed_end]).digest() != image_hash:
        raise ImageRejected(
            "the image hash does not match its contents (tampered or corrupted)",
            reason="tampered",
        )
    return ImageInfo(
        version=f"{major}.{minor}.{rev}" + (f"+{build}" if build else ""),
        size=len(data),
        image_hash=image_hash,
        file_sha256=hashlib.sha256(data).digest(),
        signatures=tuple(signatures),
    )


def _check_room(data: bytes, offset: int, need: int) -> None:
    if offset + need > len(data):
        raise ImageRejected(
            f"the image is truncated: its layout needs {offset + need} bytes, "
            f"the file has {len(data)}",
            reason="truncated",
        )


def load_trusted_keys(paths: tuple[Path, ...], source: Path | None = None) -> list[TrustedKey]:
    """Load PEM keys with imgtool; a bad file is a :class:`ConfigError` naming it."""
    from imgtool import keys as imgtool_keys

    loaded = []
    for path in paths:
        try:
            key = imgtool_keys.load(str(path))
        except Exception as exc:  # imgtool raises bare Exception, ValueError, OSError, ...
            raise ConfigError(
                f"{path}: not a key imgtool can load ({type(exc).__name__}: {exc})",
                key="firmware.trusted_keys",
                source=source,
            ) from exc
        if key is None:
            raise ConfigError(
                f"{path}: not a key imgtool can load", key="firmware.trusted_keys", source=source
            )
        loaded.append(TrustedKey(path, key))
    return loaded


def verify_image(path: Path, data: bytes, keys: list[TrustedKey]) -> tuple[ImageInfo, Path]:
    """Layout, hash and signature of the image stored at ``path`` (whose bytes are ``data``).

    Returns the image's facts and the trusted key file that verified it. Blocking: run it in
    a thread.
    """
    info = inspect_image(data)
    if not info.signatures:
        raise ImageRejected("the image is not signed", reason="unsigned")
    if not keys:
        raise ImageRejected(
            "no firmware.trusted_keys are configured: every image is refused",
            reason="no_trusted_keys",
        )
    from imgtool.image import Image, VerifyResult

    for trusted in keys:
        try:
            result, *_ = Image.verify(str(path), trusted.key)
        except (struct.error, ValueError, IndexError) as exc:
            raise ImageRejected(
                f"imgtool cannot parse the image: {exc}", reason="malformed"
            ) from exc
        if result == VerifyResult.OK:
            return info, trusted.path
        if result == VerifyResult.INVALID_HASH:
            raise ImageRejected("the image hash does not match its contents", reason="tampered")
    kinds = ", ".join(info.signatures)
    raise ImageRejected(
        f"the image's signature ({kinds}) does not verify with any trusted key", reason="untrusted"
    )
