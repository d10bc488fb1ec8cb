"""One request to the fleet service, shared by the CLI, ``enroll`` and the agent's renewer."""

from __future__ import annotations

from typing import Any

from agent.errors import FleetRequestError
from agent.fleet import protocol

__all__ = ["DEFAULT_TIMEOUT_S", "request_json"]

DEFAULT_TIMEOUT_S = 10.0


async def request_json(
    nats_client: Any, subject: str, body: bytes, *, what: str, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """One request to the fleet service; its error reply becomes FleetRequestError."""
    import nats.errors

    try:
        reply = await nats_client.request(subject, body, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise FleetRequestError(
            f"{what}: no fleet service answers on {subject}; is 'fleet serve' running?",
            code=503,
            reason="no-service",
        ) from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise FleetRequestError(
            f"{what}: the fleet service did not answer ({exc or 'timed out'})",
            code=504,
            reason="timeout",
        ) from exc
    return protocol.parse_reply(bytes(reply.data), reply.headers, what)
