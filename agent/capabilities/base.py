"""The capability protocol and the registry that routes actors' host calls to capabilities.

Routing follows the wasmCloud 0.x host (wasmCloud/wasmcloud-otp:host_core/lib/host_core/
web_assembly/imports.ex, summarised in reference/wasmcloud-protocol.md §2.4): a host call
``(binding, namespace, operation, payload)`` names the capability contract in
``namespace``, and the actor may only use contracts listed in its wascap claims (``caps``).
Built-in capabilities serve every link name (``binding``): the device has one local
NATS and one local bucket, so there is nothing to choose between.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from typing import Protocol

from agent.errors import (
    CapabilityDenied,
    CapabilityError,
    CapabilityUnavailable,
    UnknownCapability,
)

__all__ = ["Capabilities", "Capability", "operation_name"]

log = logging.getLogger(__name__)


class Capability(Protocol):
    """A capability contract the device serves itself (``wasmcloud:keyvalue``, ...)."""

    contract_id: str
    """The namespace actors call, which is also the capability claim they need."""

    async def handle(self, actor_id: str, operation: str, payload: bytes) -> bytes:
        """Serve one operation and return the msgpack response (``b""`` for none).

        Raises:
            CapabilityError: a subclass whose message the guest sees as the host error:
                :class:`~agent.errors.UnknownOperation`, :class:`~agent.errors.PayloadError`,
                :class:`~agent.errors.CapabilityTimeout`,
                :class:`~agent.errors.CapabilityUnavailable`.
        """
        ...


def operation_name(operation: str, interface: str) -> str:
    """The bare method name: ``KeyValue.Get`` and ``Get`` both give ``Get``.

    wasmbus-rpc actors send ``Interface.Method`` (wasmCloud/interfaces:keyvalue/rust/src/
    keyvalue.rs, ``KeyValueSender``); early generated senders sent the bare method
    (messaging.rs ``method: "Publish"``), and providers dispatch on the bare name.
    Any other prefix is kept, so ``Other.Get`` is not mistaken for ``Get``.
    """
    prefix = f"{interface}."
    return operation[len(prefix) :] if operation.startswith(prefix) else operation


class Capabilities:
    """The built-in capabilities by contract id, and the claim check in front of them.

    Example::

        caps = Capabilities([MessagingCapability(nc), KeyValueCapability(nc)])
        response = await caps.call(actor_id, claims.caps, "default",
                                   "wasmcloud:keyvalue", "KeyValue.Get", payload)
    """

    def __init__(self, capabilities: Iterable[Capability] = ()) -> None:
        self._by_contract: dict[str, Capability] = {}
        for capability in capabilities:
            self.register(capability)

    def register(self, capability: Capability) -> None:
        """Add a capability; a second one for the same contract id is a ``ValueError``."""
        if capability.contract_id in self._by_contract:
            raise ValueError(f"a capability for {capability.contract_id} is already registered")
        self._by_contract[capability.contract_id] = capability

    def get(self, namespace: str) -> Capability | None:
        """The capability serving ``namespace``, if any."""
        return self._by_contract.get(namespace)

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._by_contract

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_contract))

    def __len__(self) -> int:
        return len(self._by_contract)

    async def call(
        self,
        actor_id: str,
        claims_caps: Collection[str],
        binding: str,
        namespace: str,
        operation: str,
        payload: bytes,
    ) -> bytes:
        """Serve one host call for ``actor_id`` whose claims list ``claims_caps``.

        Raises:
            CapabilityDenied: ``namespace`` is not in the actor's claims.
            UnknownCapability: no built-in capability serves ``namespace``.
            CapabilityError: whatever the capability raised; any other exception from a
                capability is logged and turned into :class:`CapabilityUnavailable`, so
                the guest always gets a host error, never a crashed host call.
        """
        # The claim comes first: an actor learns nothing about what this host serves by
        # calling namespaces it was never signed for.
        if namespace not in claims_caps:
            raise CapabilityDenied(
                f"actor {actor_id} is not allowed to use {namespace}: missing capability claim"
            )
        capability = self._by_contract.get(namespace)
        if capability is None:
            served = ", ".join(self) or "none"
            raise UnknownCapability(
                f"capability {namespace} is not served by this host (built-in: {served})"
            )
        log.debug("actor %s calls %s %s on link %r", actor_id, namespace, operation, binding)
        try:
            return await capability.handle(actor_id, operation, payload)
        except CapabilityError:
            raise
        except Exception as exc:
            log.exception("capability %s failed on %s for %s", namespace, operation, actor_id)
            raise CapabilityUnavailable(
                f"{namespace} {operation}: internal error ({type(exc).__name__})"
            ) from exc
