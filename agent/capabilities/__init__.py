"""Built-in capabilities the device serves to its actors, so they work offline.

``wasmcloud:messaging`` (:class:`MessagingCapability`) and ``wasmcloud:keyvalue``
(:class:`KeyValueCapability`) run on the local nats-server leaf node; the registry
:class:`Capabilities` checks each host call against the actor's capability claims and
routes it by namespace. Logging and numbergen live in :mod:`agent.runtime.builtins`.
"""

from __future__ import annotations

from agent.capabilities.base import Capabilities, Capability
from agent.capabilities.keyvalue import KEYVALUE, KeyValueCapability
from agent.capabilities.kvstore import DEFAULT_BUCKET, KeyValueSettings
from agent.capabilities.messaging import MESSAGING, MessagingCapability, MessagingLimits

__all__ = [
    "DEFAULT_BUCKET",
    "KEYVALUE",
    "MESSAGING",
    "Capabilities",
    "Capability",
    "KeyValueCapability",
    "KeyValueSettings",
    "MessagingCapability",
    "MessagingLimits",
]
