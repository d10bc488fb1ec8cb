"""Shared helpers for the sandbox tests: budgets, guests and a recording host-call handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import HostCallError
from profiles import Budgets, load_profile

SANDBOX_GUESTS = Path(__file__).resolve().parents[1] / "fixtures" / "sandbox_guests"
DEADLINE = 0.5


def budgets(**changes: object) -> Budgets:
    """Small, fast budgets for tests; RLIMIT_AS keeps a runaway worker off the test box."""
    base = load_profile("generic-x86_64").budgets.replace(
        sandbox_workers=2,
        invocation_deadline_s=DEADLINE,
        worker_memory_limit_mb=384,
        actor_stack_bytes=64 * 1024,
    )
    return base.replace(**changes)


def guest(name: str) -> bytes:
    """A project-written guest from tests/fixtures/sandbox_guests."""
    return (SANDBOX_GUESTS / f"{name}.wasm").read_bytes()


@dataclass
class Recorder:
    """A host-call handler that records calls; answers ``response`` or fails with ``fail``."""

    response: bytes = b""
    fail: str | None = None
    calls: list[tuple[str, str, str, str, bytes]] = field(default_factory=list)

    async def __call__(
        self, actor_id: str, binding: str, namespace: str, operation: str, payload: bytes
    ) -> bytes:
        self.calls.append((actor_id, binding, namespace, operation, payload))
        await asyncio.sleep(0)  # a real handler awaits something
        if self.fail is not None:
            raise HostCallError(self.fail)
        return self.response
