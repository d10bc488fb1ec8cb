"""Logging that remote input cannot forge or flood.

* :class:`EscapingFormatter` / :class:`JsonFormatter`: every record becomes exactly one
  line. Strings that came from the lattice (invocation ids, subjects, actor references)
  are logged as they arrived, so control characters are escaped (``\\n`` → ``\\\\n``, ANSI
  ``ESC`` → ``\\\\x1b``) and a caller can never write a fake line; JSON lines escape by
  construction.
* :class:`RateLimiter`: the first of a kind of message is logged, repeats within the
  window are counted and reported with the next one that gets through ("… and 4,999
  more in the last 10 s"), so 5,000 bad requests write a handful of lines, not 5,000 — an
  SD card is worn by writes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import LogFileSettings

__all__ = [
    "EscapingFormatter",
    "JsonFormatter",
    "RateLimiter",
    "escape",
    "set_level",
    "setup_logging",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with control characters written as escapes; printable text unchanged."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


class EscapingFormatter(logging.Formatter):
    """The text format, one line per record (tracebacks, ours, follow on their own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_forced_debug = False  # --debug wins over the config's level, also after a reload


def _formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else EscapingFormatter(_TEXT_FORMAT)


def setup_logging(
    level: str,
    log_format: str = "text",
    *,
    debug: bool = False,
    log_file: LogFileSettings | None = None,
) -> None:
    """Configure the root logger once for a command: stderr, text or JSON lines.

    With a ``log_file`` every record goes to that file (rotated at its size, with its
    backups kept, mode 0640 under the agent's umask) and only warnings and errors still
    go to stderr, so a terminal or the journal shows problems without every line being
    written twice to an SD card.
    """
    global _forced_debug
    _forced_debug = debug
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        existing.close()
    root.addHandler(handler)
    if log_file is not None:
        handler.setLevel(logging.WARNING)
        root.addHandler(_file_handler(log_file, log_format))
    set_level(level)


def set_level(level: str) -> None:
    """Change the log level of a running process (``--debug`` keeps it at debug)."""
    logging.getLogger().setLevel(
        logging.DEBUG if _forced_debug else getattr(logging, level.upper())
    )


def _file_handler(settings: LogFileSettings, log_format: str) -> logging.Handler:
    from logging.handlers import RotatingFileHandler

    from agent.errors import ConfigError
    from agent.fsutil import ensure_dir

    try:
        ensure_dir(settings.path.parent)
        handler = RotatingFileHandler(
            settings.path,
            maxBytes=settings.max_bytes,
            backupCount=settings.backups,
            encoding="utf-8",
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot open the log file {settings.path}: {exc.strerror or exc}", key="log.file"
        ) from exc
    handler.setFormatter(_formatter(log_format))
    return handler


class RateLimiter:
    """Decides which of many similar messages to log; bounded memory.

    ``key`` groups messages that are "the same kind" (for example the logger and a fixed
    reason, never the remote-controlled part).
    """

    MAX_KEYS = 256

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self._since: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def check(self, key: str) -> tuple[bool, int]:
        """(log it?, how many were suppressed since the last one logged)."""
        now = self.clock()
        since = self._since.get(key)
        if since is not None and now - since < self.window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        if len(self._since) >= self.MAX_KEYS and key not in self._since:
            self._since.clear()  # many kinds at once: forget them rather than grow
        self._since[key] = now
        return True, self._suppressed.pop(key, 0)

    def log(
        self, logger: logging.Logger, level: int, key: str, message: str, *args: object
    ) -> None:
        """Log ``message % args`` unless a message of ``key`` was logged within the window."""
        allowed, skipped = self.check(key)
        if not allowed:
            return
        if skipped:
            message += f" (and {skipped:,} more like it in the last {self.window:g} s)"
        logger.log(level, message, *args)
