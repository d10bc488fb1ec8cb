"""Logging remote input: escaped, one line per record, rate-limited, JSON on demand."""

from __future__ import annotations

import json
import logging

import pytest

from agent.logs import EscapingFormatter, JsonFormatter, RateLimiter, escape


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("lattice_edge.rpc", logging.WARNING, __file__, 1, message, args, None)


def test_escape_control_characters() -> None:
    assert escape("a\nb\r\t\x1b[31mred\x00") == "a\\nb\\r\\t\\x1b[31mred\\x00"
    assert escape("plain ünïcode") == "plain ünïcode"


def test_a_forged_line_cannot_be_written() -> None:
    # Regression: an invocation id with "\n" and ANSI escapes wrote a fake CRITICAL line.
    forged = "id\n2026-12-01 00:00:00 CRITICAL lattice_edge.host: \x1b[31mdisk wiped"
    text = EscapingFormatter("%(levelname)s %(message)s").format(_record("rejected %s", forged))
    assert "\n" not in text and "\x1b" not in text
    assert text.startswith("WARNING rejected id\\n")


def test_json_lines() -> None:
    line = JsonFormatter().format(_record("rejected %s", "a\nb"))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["msg"] == "rejected a\nb" and entry["level"] == "warning"


def test_rate_limiter_counts_what_it_suppresses(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = RateLimiter(window=10.0, clock=lambda: now[0])
    logger = logging.getLogger("test.ratelimit")
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        for _ in range(5000):
            limiter.log(logger, logging.WARNING, "bad", "bad invocation")
        now[0] = 10.5
        limiter.log(logger, logging.WARNING, "bad", "bad invocation")
        limiter.log(logger, logging.WARNING, "other", "another kind")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad invocation",
        "bad invocation (and 4,999 more like it in the last 10 s)",
        "another kind",
    ]


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter()
    for index in range(RateLimiter.MAX_KEYS * 3):
        assert limiter.check(f"key-{index}")[0]
    assert len(limiter._since) <= RateLimiter.MAX_KEYS
