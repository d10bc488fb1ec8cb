"""The part of a NATS client the lattice layer uses, as a protocol.

The lattice code (control, RPC, capabilities, the CLI's client) is written against this
instead of ``Any`` or nats-py's concrete class: the type checker holds every call to the
real signatures (nats-py ships ``py.typed``), tests can pass a small fake where a unit
test needs one, and nats-py itself is imported only where a connection is made — it is
the largest import of the agent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

__all__ = ["MessageHandler", "NatsClient"]

MessageHandler = Callable[["Msg"], Awaitable[None]]


class NatsClient(Protocol):
    """What the lattice layer needs of a connection (nats-py's ``Client`` satisfies it)."""

    @property
    def is_closed(self) -> bool: ...

    @property
    def is_connected(self) -> bool: ...

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None: ...

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: MessageHandler | None = None,
    ) -> Subscription: ...

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg: ...

    def new_inbox(self) -> str: ...

    def jetstream(self, **options: Any) -> JetStreamContext: ...

    async def flush(self, timeout: int = 10) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...
