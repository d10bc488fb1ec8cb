"""One request to the fleet service, shared by the CLI, ``enroll`` and the agent's renewer."""

from __future__ import annotations

from typing import Any

from agent.errors import FleetRequestError, JWTError
from agent.fleet import protocol
from agent.identity import jwt
from agent.identity.keys import KeyPair

__all__ = ["DEFAULT_TIMEOUT_S", "REQUEST_TIMEOUT_S", "check_jwt", "request_json"]

DEFAULT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0  # what a device waits for enrollment and renewal replies


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


def check_jwt(user_jwt: str, user: KeyPair, host_id: str) -> None:
    """Refuse a JWT the service sent that is not for this user key and host."""
    try:
        claims = jwt.decode(user_jwt).claims
    except JWTError as exc:
        raise FleetRequestError(
            f"enroll: the service sent a malformed JWT: {exc}", code=502
        ) from exc
    if claims.get("sub") != user.public_key or claims.get("name") != host_id:
        raise FleetRequestError("enroll: the service sent a JWT for another device", code=502)
