"""Routing the host calls actors make (``__host_call``) to whatever serves them.

In order, as the wasmCloud 0.x hosts route them:

1. ``wasmcloud:builtin:logging`` and ``wasmcloud:builtin:numbergen`` are answered in-host;
2. a namespace that is an actor key (``M…``) is an actor-to-actor call, sent over the
   lattice as an invocation signed by this host's cluster key;
3. a link definition for (actor, namespace, binding) sends the call to its provider on
   ``wasmbus.rpc.{lattice}.{provider}.{link}``;
4. ``wasmcloud:messaging`` and ``wasmcloud:keyvalue`` are served by the device itself (local
   NATS and a local JetStream KV bucket), so actors keep working offline;
5. anything else fails with "no link exists".

Contracts in ``linked_in_host`` (the host passes ``wasmcloud:messaging``) skip step 3: the
host is their provider, a link only configures it (``SUBSCRIPTION``, see
:mod:`agent.capabilities.subscriptions`), so an actor answering a message it was delivered
publishes through the device, not to a provider that is not there.

Every capability, built-in or linked, needs its contract id in the actor's claims; an
unsigned actor (allowed only by configuration) holds no claims and so gets none.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from agent.errors import HostCallError
from agent.identity.keys import KeyKind, is_public_key
from agent.lattice.actors import actor_of
from agent.lattice.control_codec import LinkDefinition
from agent.runtime.builtins import LOGGING, NUMBERGEN, BuiltinHostCalls, no_link_error

__all__ = ["CapabilityServer", "HostCallRouter", "LatticeCaller", "LinkTable"]


class CapabilityServer(Protocol):
    """Capabilities the device serves itself (``agent.capabilities``)."""

    def __contains__(self, contract_id: object) -> bool:
        """True when ``contract_id`` is served in-host."""
        ...

    async def call(
        self,
        actor_id: str,
        claims_caps: Collection[str],
        binding: str,
        namespace: str,
        operation: str,
        payload: bytes,
    ) -> bytes:
        """Serve one call; refuses namespaces missing from ``claims_caps``."""
        ...


class LatticeCaller(Protocol):
    """Sends invocations from a local actor over the lattice."""

    async def call_actor(self, origin: str, target: str, operation: str, payload: bytes) -> bytes:
        """Invoke actor ``target`` on whichever host runs it."""
        ...

    async def call_provider(
        self, origin: str, link: LinkDefinition, operation: str, payload: bytes
    ) -> bytes:
        """Invoke the provider a link definition points at."""
        ...


class LinkTable:
    """Link definitions, by (actor, contract, link name)."""

    def __init__(self, links: Collection[LinkDefinition] = ()) -> None:
        self._links = {_key(link): link for link in links}

    def put(self, link: LinkDefinition) -> None:
        """Add or replace a link definition."""
        self._links[_key(link)] = link

    def delete(self, actor_id: str, contract_id: str, link_name: str) -> LinkDefinition | None:
        """Remove a link definition; return it if it existed."""
        return self._links.pop((actor_id, contract_id, link_name), None)

    def find(self, actor_id: str, contract_id: str, link_name: str) -> LinkDefinition | None:
        """The link an actor's call with this namespace and binding uses."""
        return self._links.get((actor_id, contract_id, link_name or "default"))

    def all(self) -> tuple[LinkDefinition, ...]:
        """Every link definition, in a stable order."""
        return tuple(self._links[key] for key in sorted(self._links))


def _key(link: LinkDefinition) -> tuple[str, str, str]:
    return (link.actor_id, link.contract_id, link.link_name)


class HostCallRouter:
    """The sandbox's host-call handler for lattice actors (see the module docstring)."""

    def __init__(
        self,
        caps_of: Callable[[str], Collection[str] | None],
        links: LinkTable,
        *,
        capabilities: CapabilityServer | None = None,
        lattice: LatticeCaller | None = None,
        linked_in_host: Collection[str] = (),
    ) -> None:
        self._caps_of = caps_of
        self._linked_in_host = frozenset(linked_in_host)
        self._links = links
        self._capabilities = capabilities
        self._lattice = lattice
        self._builtins = BuiltinHostCalls()

    async def __call__(
        self, actor_id: str, binding: str, namespace: str, operation: str, payload: bytes
    ) -> bytes:
        """Serve one host call from an actor instance (``actor_id`` is its sandbox key)."""
        actor_id = actor_of(actor_id)
        caps = self._caps_of(actor_id)
        if caps is None:
            raise HostCallError(f"actor {actor_id} is not running on this host")
        if namespace in (LOGGING, NUMBERGEN):
            self._require(actor_id, caps, namespace)
            return await self._builtins(actor_id, binding, namespace, operation, payload)
        if len(namespace) == 56 and is_public_key(namespace, KeyKind.MODULE):
            if self._lattice is None:
                raise HostCallError("actor-to-actor calls need a lattice connection")
            return await self._lattice.call_actor(actor_id, namespace, operation, payload)
        link = (
            None
            if namespace in self._linked_in_host
            else self._links.find(actor_id, namespace, binding)
        )
        if link is not None:
            self._require(actor_id, caps, namespace)
            if self._lattice is None:
                raise HostCallError("linked providers need a lattice connection")
            return await self._lattice.call_provider(actor_id, link, operation, payload)
        if self._capabilities is not None and namespace in self._capabilities:
            # Capabilities.call checks the claim itself, with the same message.
            return await self._capabilities.call(
                actor_id, caps, binding, namespace, operation, payload
            )
        raise no_link_error(namespace, binding or "default")

    @staticmethod
    def _require(actor_id: str, caps: Collection[str], namespace: str) -> None:
        if namespace not in caps:
            raise HostCallError(
                f"actor {actor_id} is not allowed to use {namespace}: missing capability claim"
            )
