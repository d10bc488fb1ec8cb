"""Durations as the CLI and ``fleet.toml`` write them: ``30s``, ``2m``, ``24h``, ``7d``. Pure."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")
MAX_SECONDS = 10 * 365 * 86400


def parse_duration(text: str) -> int:
    """Seconds in ``text`` (a whole number and one unit of s, m, h or d); ValueError if not."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be text like '24h', not {type(text).__name__}")
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a duration: write a whole number and s, m, h or d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds == 0:
        raise ValueError(f"'{text}' is zero; a duration must be positive")
    if seconds > MAX_SECONDS:
        raise ValueError(f"'{text}' is longer than ten years")
    return seconds


def format_duration(seconds: int) -> str:
    """The largest exact unit: 86400 -> ``1d``, 90 -> ``90s``."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
