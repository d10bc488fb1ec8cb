"""Replay protection: each invocation runs once; memory stays bounded."""

from __future__ import annotations

import pytest

from agent.errors import AntiForgeryError
from agent.lattice.replay import ReplayGuard


def test_a_replayed_invocation_is_refused() -> None:
    now = [1000.0]
    guard = ReplayGuard(window=60, clock=lambda: now[0])
    guard.admit("jti-1", 1000)
    for _ in range(3):
        with pytest.raises(AntiForgeryError, match="replay") as caught:
            guard.admit("jti-1", 1000)
        assert caught.value.check == "replay"
    guard.admit("jti-2", 999)


def test_outside_the_clock_skew_window() -> None:
    guard = ReplayGuard(window=60, clock=lambda: 1000.0)
    with pytest.raises(AntiForgeryError, match="clock-skew"):
        guard.admit("old", 900)
    with pytest.raises(AntiForgeryError, match="clock-skew"):
        guard.admit("future", 1100)


def test_entries_expire_with_the_window() -> None:
    now = [1000.0]
    guard = ReplayGuard(window=60, clock=lambda: now[0])
    for index in range(100):
        guard.admit(f"id-{index}", now[0])
    now[0] += 61
    guard.admit("fresh", now[0])
    assert len(guard) == 1


def test_a_full_cache_shrinks_the_window_instead_of_forgetting_replays() -> None:
    now = [1000.0]
    guard = ReplayGuard(window=60, max_entries=10, clock=lambda: now[0])
    for index in range(10):
        now[0] += 1
        guard.admit(f"id-{index}", now[0])
    now[0] += 1
    guard.admit("id-10", now[0])  # forgets id-0, issued at 1001
    assert len(guard) == 10
    with pytest.raises(AntiForgeryError, match="too old"):
        guard.admit("id-0", 1001)  # a replay of the forgotten one is still refused
    guard.admit("id-11", now[0])
