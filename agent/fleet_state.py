"""``<data>/fleet.json``: which fleet a device belongs to and how its credential renewal
goes. Written by ``lattice-edge enroll`` and the agent's renewer, read by ``status``. Kept
apart and light so that ``status`` and an agent outside any fleet import nothing more."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import IdentityError
from agent.fsutil import write_atomic
from agent.identity import jwt

__all__ = ["FLEET_STATE", "credentials_status", "read_fleet_state", "write_fleet_state"]

FLEET_STATE = "fleet.json"


def _state_path(config: Config) -> Path:
    return config.host.data_dir / FLEET_STATE


def read_fleet_state(config: Config) -> dict[str, Any] | None:
    """``<data>/fleet.json``: which fleet the device belongs to and how renewal goes."""
    try:
        data = json.loads(_state_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_fleet_state(config: Config, state: dict[str, Any]) -> None:
    """Replace the fleet state file atomically."""
    write_atomic(_state_path(config), json.dumps(state, indent=2, sort_keys=True).encode())


def credentials_status(config: Config, *, now: float | None = None) -> dict[str, Any] | None:
    """What ``status`` shows about fleet credentials; None for a device not in a fleet."""
    state = read_fleet_state(config)
    if state is None:
        return None
    moment = time.time() if now is None else now
    expires: int | None = None
    if config.upstream is not None and config.upstream.credentials is not None:
        try:
            claims = jwt.decode(jwt.read_creds(config.upstream.credentials).jwt).claims
            expires = int(claims["exp"]) if isinstance(claims.get("exp"), int) else None
        except (IdentityError, KeyError):
            expires = None
    status = str(state.get("status", "active"))
    if status == "active" and expires is not None and expires < moment:
        status = "expired"
    return {
        "status": status,
        "fleet": state.get("fleet"),
        "expires_at": expires,
        "last_renew": state.get("last_renew"),
        "error": state.get("error"),
    }
