"""A lattice control client: what ``lattice-edge actor …`` and ``demo`` speak.

It talks to hosts only through the lattice (control subjects, events, RPC), exactly as a
cloud-side operator would, so the CLI on a device shows what the cloud sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.config import Config
from agent.errors import AgentStateError, CommandRefused, LatticeEdgeError
from agent.identity.keys import KeyPair
from agent.lattice import subjects
from agent.lattice.invocation import (
    InvocationResponse,
    WasmCloudEntity,
    new_invocation,
)

if TYPE_CHECKING:
    from agent.lattice.natsclient import NatsClient

__all__ = ["CallReply", "LatticeClient", "connect", "connect_local"]

DEFAULT_TIMEOUT_S = 5.0

# What the control opcodes ask for, in the words of our commands (for refusals).
_COMMAND_WORDS = {
    "la": "start the actor",
    "sa": "stop the actor",
    "scale": "scale the actor",
    "upd": "update the actor",
    "stop": "stop",
}


@dataclass(frozen=True, slots=True)
class CallReply:
    """An actor's answer to an invocation, and how long the round trip took."""

    response: bytes
    seconds: float


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    lattice: str = "default",
    creds: str | None = None,
    seed: str | None = None,
    inbox_prefix: str | None = None,
    connect_timeout: float = 3.0,
) -> AsyncIterator[LatticeClient]:
    """Connect to a NATS server (a host's local port, or the cloud) for lattice control.

    ``creds`` is a ``.creds`` file (the cloud); ``seed`` an nkey user seed (the agent
    user, on a device's local port; see :func:`connect_local`).
    ``inbox_prefix`` replaces ``_INBOX`` for replies, for credentials that may subscribe
    only to their own inbox (a fleet's bootstrap and device users).
    """
    client = await _open(url, creds, seed, inbox_prefix, connect_timeout)
    try:
        yield LatticeClient(client, lattice)
    finally:
        with contextlib.suppress(Exception):
            await client.close()


class _Unreachable(AgentStateError):
    """Nothing answered at ``url``; ``reason`` says how it failed."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the lattice at {url}: {reason}")


async def _open(
    url: str,
    creds: str | None,
    seed: str | None,
    inbox_prefix: str | None,
    connect_timeout: float,
) -> Any:
    import nats
    import nats.errors

    seen: list[Exception] = []

    async def quiet(exc: Exception) -> None:
        # nats-py's default callback prints a traceback; we report the last error once.
        seen.append(exc)

    options: dict[str, Any] = {}
    if seed is not None:
        options["nkeys_seed_str"] = seed
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    try:
        # One attempt, no back-off: nothing listening is a refusal in milliseconds, where
        # nats-py's defaults (2 s between attempts) made a stopped agent cost 4 s.
        return await nats.connect(
            servers=[url], user_credentials=creds, connect_timeout=connect_timeout,
            max_reconnect_attempts=1, reconnect_time_wait=0.05, allow_reconnect=False,
            error_cb=quiet, **options,
        )  # fmt: skip
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise _Unreachable(url, _describe(seen[-1] if seen else exc)) from exc


def _describe(exc: BaseException) -> str:
    """A connection failure in a few words (not nats-py's "no servers available")."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).removeprefix("nats: ").strip()
    if "authorization violation" in text.lower():
        return "the leaf refused the agent user (authorization violation)"
    return text or type(exc).__name__


@contextlib.asynccontextmanager
async def connect_local(
    config: Config, *, connect_timeout: float = 3.0
) -> AsyncIterator[LatticeClient]:
    """Connect to this device's own leaf as the agent user (the seed in the data dir).

    When nothing answers, the error is one line with the next step: is ``lattice-edge
    run`` running, and with the config this command used?
    """
    from agent.identity.local import load_agent_user
    from agent.leaf.access import agent_inbox_prefix

    seed = load_agent_user(config.host.data_dir).seed
    url = f"nats://{config.leaf.listen}"
    try:
        client = await _open(url, None, seed, agent_inbox_prefix("cli"), connect_timeout)
    except _Unreachable as exc:
        which = f"config {config.source}" if config.source else "the embedded default config"
        raise AgentStateError(
            f"cannot reach the agent at {url} ({exc.reason}); is 'lattice-edge run' running "
            f"with {which}?"
        ) from exc
    try:
        yield LatticeClient(client, config.host.lattice)
    finally:
        with contextlib.suppress(Exception):
            await client.close()


class LatticeClient:
    """Control requests, event waits and invocations over one NATS connection."""

    def __init__(self, nats_client: NatsClient, lattice: str = "default") -> None:
        self.nats = nats_client
        self.lattice = lattice

    async def request(
        self,
        subject: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        what: str | None = None,
    ) -> Any:
        """One JSON request/reply; ``what`` names the request in errors (else the subject)."""
        import nats.errors

        asked = what or subject
        payload = json.dumps(body or {}).encode()
        try:
            reply = await self.nats.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise AgentStateError(f"no host answers {asked}; is the agent running?") from None
        except TimeoutError:
            raise AgentStateError(
                f"no answer to {asked} within {timeout:g} s (--timeout sets how long to wait)"
            ) from None
        except nats.errors.Error as exc:
            raise AgentStateError(f"no answer to {asked}: {exc}") from exc
        try:
            return json.loads(reply.data)
        except ValueError as exc:
            raise AgentStateError(f"the reply to {asked} is not JSON") from exc

    async def ping(self, *, wait: float = 1.0) -> list[dict[str, Any]]:
        """Every host that answers ``ping.hosts`` within ``wait`` seconds."""
        inbox = self.nats.new_inbox()
        replies: list[dict[str, Any]] = []
        subscription = await self.nats.subscribe(inbox)
        try:
            await self.nats.publish(subjects.ping_hosts(self.lattice), b"{}", reply=inbox)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await subscription.next_msg(timeout=left)
                except TimeoutError:
                    break
                with contextlib.suppress(ValueError):
                    replies.append(json.loads(message.data))
        finally:
            await subscription.unsubscribe()
        return replies

    async def upload_module(self, module: bytes) -> str:
        """Put a module into the device's own object store; return the reference to start it.

        How the local CLI hands the agent a file: the agent reads no path a caller names
        outside its roots, but any module the agent user uploads.
        """
        import hashlib

        import nats.errors
        import nats.js.errors

        from agent.lattice.refs import MODULE_BUCKET

        digest = hashlib.sha256(module).hexdigest()
        try:
            store = await self.nats.jetstream(timeout=DEFAULT_TIMEOUT_S).object_store(MODULE_BUCKET)
            await store.put(digest, module)
        except nats.js.errors.BucketNotFoundError:
            raise AgentStateError(
                f"the agent has no module bucket '{MODULE_BUCKET}' (is JetStream disabled?)"
            ) from None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            raise AgentStateError(f"cannot upload the module: {exc or 'timed out'}") from exc
        return f"nats-os://{MODULE_BUCKET}/{digest}"

    async def inventory(
        self, host_id: str, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """A host's inventory."""
        reply: dict[str, Any] = await self.request(
            subjects.get_inventory(self.lattice, host_id), timeout=timeout, what="the inventory"
        )
        return reply

    async def command(
        self, host_id: str, op: str, body: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Send ``cmd.{host}.{op}``; raise when it is not accepted.

        The error speaks of what was asked ("the host refused to start …"), never of the
        wire opcode: operators know our commands, not ``la``.
        """
        what = _COMMAND_WORDS.get(op, f"carry out '{op}'")
        ack = await self.request(
            subjects.command(self.lattice, host_id, op), body, timeout=timeout,
            what=f"the request to {what}",
        )  # fmt: skip
        if not isinstance(ack, dict) or not ack.get("accepted"):
            error = ack.get("error") if isinstance(ack, dict) else ack
            raise CommandRefused(f"the host refused to {what}: {error}", op=op, reason=str(error))

    @contextlib.asynccontextmanager
    async def events(self, *types: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Collect lattice events of the given types while the block runs."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        wanted = {f"com.wasmcloud.lattice.{t}" for t in types}

        async def collect(message: Any) -> None:
            with contextlib.suppress(ValueError):
                event = json.loads(message.data)
                if isinstance(event, dict) and event.get("type") in wanted:
                    queue.put_nowait(event)

        subscription = await self.nats.subscribe(subjects.events(self.lattice), cb=collect)
        try:
            yield queue
        finally:
            await subscription.unsubscribe()

    @staticmethod
    async def wait_for(
        queue: asyncio.Queue[dict[str, Any]],
        match: Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> dict[str, Any]:
        """The first event in ``queue`` that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if match(event):
                return event
        raise AgentStateError(
            f"the host did not report the outcome within {timeout:g} s (raise --timeout to wait "
            "longer; 'lattice-edge actor list' shows what runs)"
        )

    async def start_actor(
        self, host_id: str, actor_ref: str, count: int = 1, *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Start an actor and wait for its ``actor_started`` (or failure) event."""
        async with self.events("actor_started", "actor_start_failed") as queue:
            await self.command(
                host_id, "la", {"actor_ref": actor_ref, "host_id": host_id, "count": count},
                timeout=min(timeout, DEFAULT_TIMEOUT_S),
            )  # fmt: skip
            event = await self.wait_for(
                queue,
                lambda e: e.get("source") == host_id
                and (e["data"].get("image_ref") == actor_ref
                     or e["data"].get("actor_ref") == actor_ref),
                timeout,
            )  # fmt: skip
        if event["type"].endswith("actor_start_failed"):
            raise LatticeEdgeError(f"cannot start {actor_ref}: {event['data'].get('error')}")
        data: dict[str, Any] = event["data"]
        return data

    async def stop_actor(self, host_id: str, actor_id: str, *, timeout: float = 30.0) -> int:
        """Stop every instance of an actor on a host; return how many were running.

        Sends ``sa`` ("stop actor"), which the host refuses at once when it does not run
        the actor, then waits for the ``actor_stopped`` event.
        """
        inventory = await self.inventory(host_id, timeout=min(timeout, DEFAULT_TIMEOUT_S))
        running = next(
            (
                a
                for a in inventory.get("actors", [])
                if isinstance(a, dict) and a.get("id") == actor_id
            ),
            None,
        )
        instances = len(running.get("instances", [])) if running else 0
        async with self.events("actor_stopped") as queue:
            await self.command(
                host_id, "sa", {"actor_ref": actor_id, "host_id": host_id, "count": 0},
                timeout=min(timeout, DEFAULT_TIMEOUT_S),
            )  # fmt: skip
            if instances:  # else the host only dropped a failed restore: no event comes
                await self.wait_for(
                    queue,
                    lambda e: (
                        e.get("source") == host_id and e["data"].get("public_key") == actor_id
                    ),
                    timeout,
                )
        return instances

    async def invoke(
        self,
        actor_id: str,
        operation: str,
        payload: bytes,
        *,
        cluster_key: KeyPair,
        host_id: str,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> CallReply:
        """Send a signed invocation to an actor and return its answer."""
        import nats.errors

        invocation = new_invocation(
            WasmCloudEntity(cluster_key.public_key),
            WasmCloudEntity(actor_id),
            operation,
            payload,
            cluster_key=cluster_key,
            host_id=host_id,
        )
        started = time.perf_counter()
        try:
            reply = await self.nats.request(
                subjects.actor_rpc(self.lattice, actor_id), invocation.encode(), timeout=timeout
            )
        except nats.errors.NoRespondersError:
            raise AgentStateError(f"no host runs actor {actor_id}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise AgentStateError(f"invoking {actor_id} failed: {exc or 'timed out'}") from exc
        seconds = time.perf_counter() - started
        response = InvocationResponse.decode(bytes(reply.data))
        if response.error:
            raise LatticeEdgeError(f"{actor_id} {operation}: {response.error}")
        return CallReply(bytes(response.msg), seconds)
