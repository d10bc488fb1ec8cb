"""One invocation of one module in a fresh sandbox: what ``lattice-edge actor call`` runs.

The module goes through the same admission as any actor (claims, imports, memory clamp),
then into a one-worker sandbox, so a hostile module hurts only that worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

from agent.runtime.admission import AdmittedModule, admit
from agent.runtime.sandbox import InvocationResult, Sandbox
from profiles import Budgets

__all__ = ["CallOutcome", "call_module"]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The admitted module and what its invocation produced."""

    module: AdmittedModule
    result: InvocationResult


async def call_module(
    wasm: bytes,
    operation: str,
    payload: bytes,
    *,
    trusted_issuers: Collection[str],
    allow_unsigned: bool,
    budgets: Budgets,
    timeout: float | None = None,
    allow_legacy_claims: bool = False,
    pinned_digests: Collection[str] = (),
) -> CallOutcome:
    """Admit ``wasm``, load it in a one-worker sandbox and invoke ``operation`` once.

    Raises ModuleError subclasses when admission rejects the module, and ActorError
    subclasses (GuestError, TrapError, InvocationTimeout, ...) when the call fails. The
    trust arguments are :func:`~agent.runtime.admission.admit`'s.
    """
    module = admit(
        wasm,
        trusted_issuers=trusted_issuers,
        allow_unsigned=allow_unsigned,
        max_pages=budgets.actor_memory_pages,
        allow_legacy_claims=allow_legacy_claims,
        pinned_digests=pinned_digests,
    )
    single = dataclasses.replace(budgets, sandbox_workers=1)
    async with Sandbox(single, deadline_s=timeout) as sandbox:
        await sandbox.load(module.actor_id, module.code)
        result = await sandbox.invoke(module.actor_id, operation, payload)
    return CallOutcome(module, result)
