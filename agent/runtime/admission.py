"""Admission: decide whether a wasm module may run as an actor, and prepare it for wasm3.

:func:`admit` is the one gate every actor passes before a sandbox worker loads it. It
checks, in order: the binary format, the wascap claims (signature, issuer trust, time
window, hash), the imports, the features wasm3 0.5 can run, the waPC exports and the
memory budget; then it returns the bytes to hand to wasm3 — memory maximum clamped, and
custom sections other than ``name`` dropped, because wasm3 keeps the whole module buffer
alive for as long as the actor runs (logger.wasm is 1.7 MB of which 1.5 MB is DWARF) while
``name`` is what makes its trap backtraces readable.

:func:`inspect_report` runs the same checks for ``lattice-edge actor inspect`` and returns a
JSON-ready report; it never raises on bad input, the verdict carries the error instead.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
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

__all__ = ["AdmittedModule", "admit", "inspect_report"]

KEPT_CUSTOM_SECTIONS = frozenset({"name"})


@dataclass(frozen=True, slots=True)
class AdmittedModule:
    """A module that passed admission, ready for wasm3."""

    code: bytes = field(repr=False)  # clamped; only the ``name`` custom section kept
    info: ModuleInfo = field(repr=False)  # describes the module as submitted
    claims: ActorClaims | None  # None only for unsigned modules admitted by configuration
    module_hash: str
    memory: MemoryLimits | None  # limits after clamping
    warnings: tuple[str, ...] = ()

    @property
    def actor_id(self) -> str:
        """The actor's public key (``M…``), or ``unsigned:<hash>`` for an unsigned module."""
        return self.claims.subject if self.claims else f"unsigned:{self.module_hash}"


def admit(
    module_bytes: bytes,
    *,
    trusted_issuers: Collection[str],
    allow_unsigned: bool,
    max_pages: int,
    now: float | None = None,
    max_size: int = DEFAULT_MAX_MODULE_BYTES,
) -> AdmittedModule:
    """Check ``module_bytes`` and return what wasm3 should load; any rejection is a ModuleError."""
    data = bytes(module_bytes)
    info = parse_module(data, max_size=max_size)
    verified = verify_claims(
        data, trusted_issuers=trusted_issuers, allow_unsigned=allow_unsigned, now=now
    )
    check_imports(info)
    check_supported(info)
    check_exports(info)
    clamped = clamp_memory(data, max_pages, info=info)
    dropped = set(info.custom_section_names) - KEPT_CUSTOM_SECTIONS
    code = strip_custom_sections(clamped, dropped) if dropped else clamped
    warnings: list[str] = []
    if verified is None:
        warnings.append("the module is unsigned; admitted because unsigned actors are allowed")
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
) -> dict[str, Any]:
    """Describe a module and whether it would be admitted, as a JSON-ready dict.

    Never raises on bad input: each part the module allows is filled in, the rest stays
    None, and ``verdict`` says ``accepted`` or ``rejected`` with the error's class and message.
    """
    data = bytes(module_bytes)
    report: dict[str, Any] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
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
        )
    except ModuleError as exc:
        report["verdict"] = {"accepted": False, "error": type(exc).__name__, "reason": str(exc)}
    else:
        report["warnings"] = list(admitted.warnings)
        report["memory_admitted"] = _memory_json(admitted.memory)
        report["verdict"] = {"accepted": True, "error": None, "reason": None}
    return report
