"""Resolving the board profile a config asks for, and the budgets that follow from it."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Config
from agent.errors import ProfileError
from profiles import AUTO, Budgets, Detection, Profile, ProfileLoadError, detect, load_profile
from profiles import read_board_facts as _read_board_facts

__all__ = ["Board", "detect_board", "resolve_board"]


@dataclass(frozen=True, slots=True)
class Board:
    """The profile in use, its budgets after config overrides, and how it was chosen."""

    profile: Profile
    budgets: Budgets
    detection: Detection | None


def detect_board() -> Detection:
    """Detect this machine's profile (device tree, architecture, RAM)."""
    try:
        return detect(*_read_board_facts())
    except ProfileLoadError as exc:
        raise ProfileError(str(exc)) from exc


def resolve_board(config: Config) -> Board:
    """Load the configured profile (or detect it) and apply ``[budgets]`` overrides."""
    detection: Detection | None = None
    try:
        if config.host.profile == AUTO:
            detection = detect_board()
            profile = detection.profile
        else:
            profile = load_profile(config.host.profile)
    except ProfileLoadError as exc:
        raise ProfileError(f"host.profile: {exc}") from exc
    return Board(profile, profile.budgets.replace(**config.budgets), detection)
