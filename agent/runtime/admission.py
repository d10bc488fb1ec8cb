"""Admission: decide whether a wasm module may run as an actor, and prepare it for wasm3.

:func:`admit` is the one gate every actor passes before a sandbox worker loads it. It
checks, in order: the binary format, the wascap claims (signature, issuer trust, time
window, hash), the imports, the features wasm3 0.5 can run, the waPC exports and the
memory budget; then it returns the bytes to hand to wasm3 — memory maximum clamped, and
custom sections other than ``name`` dropped, because wasm3 keeps the whole module buffer
alive for as long as the actor runs (logger.wasm is 1.7 MB of which 1.5 MB is DWARF) while
``name`` is what makes its trap backtraces readable.

**Pinned digests.** ``pinned_digests`` lists SHA-256 digests of whole module files (the
``sha256`` that ``actor inspect`` prints). Pinning says "trust this exact file": a pinned
module is admitted even when it is unsigned, when its issuer is not trusted, or when its
pre-revision-3 hash cannot be verified. The claims a pinned module carries are still
checked (signature, key kinds, time window, a revision >= 3 hash), because they still give
the actor its identity and capabilities. Every other check (format, imports, features,
exports, memory) applies to pinned modules as to any other.

:func:`inspect_report` runs the same checks for ``lattice-edge actor inspect`` and returns a
JSON-ready report; it never raises on bad input, the verdict carries the error instead.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ModuleError
from agent.identity.wascap import ActorClaims, extract_claims, iso_time, verify_claims
from agent.runtime.module import (
    DEFAULT_MAX_MODULE_BYTES,
    MemoryLimits,
    ModuleInfo,
    check_exports,
    check_imports,
    check_supported,
    clamp_limits,
    clamp_memory,
    module_hash,
    parse_module,
    strip_custom_sections,
)

__all__ = ["AdmittedModule", "admit", "inspect_report", "parse_digest"]

KEPT_CUSTOM_SECTIONS = frozenset({"name"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class AdmittedModule:
    """A module that passed admission, ready for wasm3."""

    code: bytes = field(repr=False)  # clamped; only the ``name`` custom section kept
    info: ModuleInfo = field(repr=False)  # describes the module as submitted
    claims: ActorClaims | None  # None only for unsigned modules admitted by configuration
    module_hash: str
    memory: MemoryLimits | None  # limits after clamping
    warnings: tuple[str, ...] = ()
    sha256: str = ""  # lower-case hex SHA-256 of the module as submitted
    pinned: bool = False  # admitted as a pinned digest (see the module docstring)

    @property
    def actor_id(self) -> str:
        """The actor's public key (``M…``), or ``unsigned:<hash>`` for an unsigned module."""
        return self.claims.subject if self.claims else f"unsigned:{self.module_hash}"


def parse_digest(text: str) -> str:
    """A pinned digest as ``admit`` compares it: 64 lower-case hex digits.

    Accepts upper or lower case and an optional ``sha256:`` prefix; raises ValueError naming
    the problem otherwise (configuration loaders turn it into their own error).
    """
    value = text.strip().lower()
    value = value.removeprefix("sha256:")
    if not _HEX_DIGEST.fullmatch(value):
        raise ValueError(
            f"{text[:80]!r} is not a SHA-256 digest (64 hex digits, optionally 'sha256:' first)"
        )
    return value


def _is_pinned(sha256: str, pinned_digests: Collection[str]) -> bool:
    return bool(pinned_digests) and sha256 in {parse_digest(d) for d in pinned_digests}


def admit(
    module_bytes: bytes,
    *,
    trusted_issuers: Collection[str],
    allow_unsigned: bool,
    max_pages: int,
    now: float | None = None,
    max_size: int = DEFAULT_MAX_MODULE_BYTES,
    allow_legacy_claims: bool = False,
    pinned_digests: Collection[str] = (),
) -> AdmittedModule:
    """Check ``module_bytes`` and return what wasm3 should load; any rejection is a ModuleError.

    ``allow_legacy_claims`` admits a module whose pre-revision-3 claims carry a hash that
    does not match its code, with a warning: its code is then not verified at all.
    ``pinned_digests`` (SHA-256 of whole files, see :func:`parse_digest`; a malformed one
    raises ValueError) are files trusted as they are: see the module docstring.
    """
    data = bytes(module_bytes)
    info = parse_module(data, max_size=max_size)
    sha256 = hashlib.sha256(data).hexdigest()
    pinned = _is_pinned(sha256, pinned_digests)
    verified = verify_claims(
        data,
        trusted_issuers=trusted_issuers,
        allow_unsigned=allow_unsigned,
        allow_legacy_claims=allow_legacy_claims,
        pinned=pinned,
        now=now,
    )
    check_imports(info)
    check_supported(info)
    check_exports(info)
    clamped = clamp_memory(data, max_pages, info=info)
    dropped = set(info.custom_section_names) - KEPT_CUSTOM_SECTIONS
    code = strip_custom_sections(clamped, dropped) if dropped else clamped
    warnings: list[str] = []
    if verified is None:
        because = "unsigned actors are allowed" if allow_unsigned else "its digest is pinned"
        warnings.append(f"the module is unsigned; admitted because {because}")
        digest = module_hash(data)
    else:
        warnings.extend(verified.warnings)
        digest = verified.module_hash
    memory = None
    if info.memory is None:
        warnings.append("the module defines no linear memory; waPC calls will fail")
    else:
        memory = clamp_limits(info.memory, max_pages)
        if info.memory.max_pages is None:
            warnings.append(
                f"no memory maximum declared; capped at the budget of {max_pages} pages"
            )
        elif memory.max_pages != info.memory.max_pages:
            warnings.append(
                f"memory maximum lowered from {info.memory.max_pages} to {max_pages} pages"
            )
    return AdmittedModule(
        code=code,
        info=info,
        claims=verified.claims if verified else None,
        module_hash=digest,
        memory=memory,
        warnings=tuple(warnings),
        sha256=sha256,
        pinned=pinned,
    )


def _iso(seconds: int | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def _memory_json(memory: MemoryLimits | None) -> dict[str, Any] | None:
    if memory is None:
        return None
    return {
        "min_pages": memory.min_pages,
        "max_pages": memory.max_pages,
        "imported": memory.imported,
    }


def inspect_report(
    module_bytes: bytes,
    *,
    trusted_issuers: Collection[str],
    allow_unsigned: bool,
    max_pages: int,
    now: float | None = None,
    allow_legacy_claims: bool = False,
    pinned_digests: Collection[str] = (),
) -> dict[str, Any]:
    """Describe a module and whether it would be admitted, as a JSON-ready dict.

    Never raises on bad input: each part the module allows is filled in, the rest stays
    None, and ``verdict`` says ``accepted`` or ``rejected`` with the error's class and message.
    The trust arguments are :func:`admit`'s; ``pinned`` says whether the digest is pinned.
    """
    data = bytes(module_bytes)
    report: dict[str, Any] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "pinned": None,
        "module_hash": None,
        "hash_matches": None,
        "claims": None,
        "imports": None,
        "exports": None,
        "memory": None,
        "memory_admitted": None,
        "custom_sections": None,
        "unsupported_features": None,
        "warnings": [],
        "verdict": None,
    }
    report["pinned"] = _is_pinned(report["sha256"], pinned_digests)
    try:
        info = parse_module(data)
        report["imports"] = [
            {"module": i.module, "name": i.name, "kind": i.kind} for i in info.imports
        ]
        report["exports"] = [{"name": e.name, "kind": e.kind} for e in info.exports]
        report["memory"] = _memory_json(info.memory)
        report["custom_sections"] = list(info.custom_section_names)
        report["unsupported_features"] = list(info.unsupported)
        report["module_hash"] = module_hash(data)
        claims = extract_claims(data)
        if claims is not None:
            report["claims"] = {
                **claims.to_json(),
                "issued_at_iso": _iso(claims.issued_at),
                "expires_iso": _iso(claims.expires),
                "not_before_iso": _iso(claims.not_before),
            }
            report["hash_matches"] = claims.hash.upper() == report["module_hash"]
    except ModuleError:
        pass  # admit() below fails on the same input and the verdict reports why
    try:
        admitted = admit(
            data,
            trusted_issuers=trusted_issuers,
            allow_unsigned=allow_unsigned,
            max_pages=max_pages,
            now=now,
            allow_legacy_claims=allow_legacy_claims,
            pinned_digests=pinned_digests,
        )
    except ModuleError as exc:
        report["verdict"] = {"accepted": False, "error": type(exc).__name__, "reason": str(exc)}
    else:
        report["warnings"] = list(admitted.warnings)
        report["memory_admitted"] = _memory_json(admitted.memory)
        report["verdict"] = {"accepted": True, "error": None, "reason": None}
    return report
