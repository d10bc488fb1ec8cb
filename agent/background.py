"""One error policy for background work: nothing but shutdown ends the host.

Every control, RPC, event and state task the host starts goes through
:meth:`Background.spawn`. The task belongs to the host's task group (so shutdown
cancels it and waits for it), and whatever it raises stops at this boundary:

* our own errors (:class:`~agent.errors.LatticeEdgeError`) are the expected failures —
  a module that does not verify, a full disk — and are logged once, rate-limited;
* ``OSError`` reaching this far is a disk or system refusal nobody mapped yet: it is
  logged as a :class:`~agent.errors.StateError` would be;
* anything else is a bug: logged with its traceback, rate-limited; the host carries on.

Only cancellation propagates. A task that owes someone a reply gets ``on_error`` to send
it, so a requester learns of the failure instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from agent.errors import LatticeEdgeError
from agent.logs import RateLimiter

__all__ = ["Background"]

logger = logging.getLogger("lattice_edge.background")


class Background:
    """Runs background coroutines in ``tasks`` under the one error policy."""

    def __init__(self, tasks: asyncio.TaskGroup, limiter: RateLimiter | None = None) -> None:
        self._tasks = tasks
        self._limiter = limiter or RateLimiter()
        self._live: set[asyncio.Task[None]] = set()
        self.failures = 0  # for status and tests

    def spawn(
        self,
        work: Coroutine[Any, Any, object],
        *,
        what: str,
        on_error: Callable[[str], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None]:
        """Run ``work`` as a task of the host; ``what`` names it in the log."""
        task = self._tasks.create_task(self._guard(work, what, on_error), name=what)
        self._live.add(task)
        task.add_done_callback(self._live.discard)
        return task

    def cancel_all(self) -> None:
        """Cancel whatever still runs (shutdown, once requests have drained)."""
        for task in list(self._live):
            task.cancel()

    async def _guard(
        self,
        work: Coroutine[Any, Any, object],
        what: str,
        on_error: Callable[[str], Awaitable[None]] | None,
    ) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = self.report(exc, what)
            if on_error is not None:
                try:
                    await on_error(message)
                except asyncio.CancelledError:
                    raise
                except Exception as reply_exc:  # the requester may be gone: nothing to do
                    logger.debug("%s: could not report the failure: %s", what, reply_exc)

    def report(self, exc: Exception, what: str) -> str:
        """Log ``exc`` by the policy; return the text a requester may be shown."""
        self.failures += 1
        if isinstance(exc, LatticeEdgeError):
            message = str(exc)
            self._limiter.log(logger, logging.ERROR, f"{what}:{type(exc).__name__}",
                              "%s: %s", what, message)  # fmt: skip
            return message
        if isinstance(exc, OSError):
            message = f"the device refused: {exc.strerror or exc}"
            self._limiter.log(logger, logging.ERROR, f"{what}:OSError", "%s: %s", what, message)
            return message
        allowed, skipped = self._limiter.check(f"{what}:bug")
        if allowed:
            more = f" (and {skipped:,} more)" if skipped else ""
            logger.error("%s failed unexpectedly%s", what, more, exc_info=exc)
        return f"internal error ({type(exc).__name__})"
