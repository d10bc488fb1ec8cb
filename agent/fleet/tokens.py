"""Enrollment tokens: ``LE1.<fleet>.<id>.<secret>``. Pure.

A token names its fleet (so a device, and the service, can say "this token is for another
fleet"), an id (the KV key of its record, safe to log and list) and a 160-bit secret. The
service stores only the secret's SHA-256, so the KV bucket never holds a spendable token.
Base32 without padding keeps the token to one copy-pasteable word.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from agent.errors import FleetRequestError

__all__ = ["Token", "new_token", "parse_token"]

VERSION = "LE1"
_TOKEN = re.compile(r"^LE1\.([A-Z2-7]{12})\.([A-Z2-7]{10})\.([A-Z2-7]{32})$")
_ID = re.compile(r"^[A-Z2-7]{10}$")


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """A parsed token; ``str()`` gives it back, ``repr()`` hides the secret."""

    fleet: str
    token_id: str
    secret: str

    def __str__(self) -> str:
        return f"{VERSION}.{self.fleet}.{self.token_id}.{self.secret}"

    def __repr__(self) -> str:
        return f"Token({self.fleet}.{self.token_id})"

    @property
    def secret_sha256(self) -> str:
        """What the service stores instead of the secret."""
        return secret_digest(self.secret)

    def matches(self, digest: str) -> bool:
        """True when ``digest`` is this token's secret digest (compared in constant time)."""
        return hmac.compare_digest(self.secret_sha256, digest)


def secret_digest(secret: str) -> str:
    """The hex SHA-256 of a token secret."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_token(fleet: str) -> Token:
    """A fresh token of ``fleet`` from the OS random source."""
    return Token(fleet, _b32(os.urandom(10))[:10], _b32(os.urandom(20)))


def parse_token(text: str) -> Token:
    """Parse a token; the error says what a token looks like (never echoing the secret)."""
    match = _TOKEN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise FleetRequestError(
            "the token is malformed: expected LE1.<fleet>.<id>.<secret> "
            "as printed by 'lattice-edge fleet token create'",
            reason="token-malformed",
        )
    return Token(match.group(1), match.group(2), match.group(3))


def check_token_id(token_id: str) -> str:
    """``token_id`` if it is a token id (10 base32 characters)."""
    if not isinstance(token_id, str) or not _ID.match(token_id):
        raise FleetRequestError(f"'{token_id}' is not a token id", reason="token-malformed")
    return token_id
