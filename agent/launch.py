"""Making and launching a host: the checks before any process starts, and an in-process
runner for tests.

:func:`prepare_host` locks the data directory and checks everything that can be checked
up front — keys, board, upstream credentials and TLS files, the nats-server binary, local
users' password files — so each problem is one clear error before anything is spawned.
:func:`run_host` runs a prepared host inside the caller's event loop until its block ends
(in the manner of uvicorn's test server), so error paths are tested in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from agent.boards import resolve_board
from agent.config import Config, LocalUserSettings
from agent.datadir import DataDirLock
from agent.errors import LeafConfigError, StateError
from agent.host import Host, HostInfo
from agent.identity.host import ensure_host_keys, load_host_keys
from agent.identity.jwt import read_creds
from agent.identity.local import ensure_agent_user, read_password_file
from agent.identity.tls import check_pem_certificate
from agent.leaf.access import LocalAccess, LocalUser
from agent.leaf.binary import find_nats_server
from agent.leaf.mqtt import MqttListener, MqttUser, is_loopback

__all__ = ["AGENT_UMASK", "prepare_host", "run_host"]

logger = logging.getLogger("lattice_edge.host")

AGENT_UMASK = 0o027  # nothing the agent or its children create is world-readable


def prepare_host(config: Config, *, create_keys: bool = False, demo: bool = False) -> Host:
    """Check everything that can be checked before starting anything.

    Loads (or, for the embedded default, creates) the host keys, resolves the board,
    reads the upstream credentials and finds nats-server, so each of those problems is
    reported as one clear error before a process is spawned. ``demo`` starts the demo
    actor when the host has no actors of its own (the embedded default does that).

    The data directory is locked first (AgentRunningError when another agent has it), and
    the umask tightened, so nothing is touched by two agents or created world-readable.
    """
    os.umask(AGENT_UMASK)
    lock = DataDirLock(config.host.data_dir)
    lock.acquire()
    try:
        return _prepare(config, lock, create_keys=create_keys, demo=demo)
    except BaseException:
        lock.release()
        raise


def _prepare(config: Config, lock: DataDirLock, *, create_keys: bool, demo: bool) -> Host:
    if create_keys:
        keys, created = ensure_host_keys(config.keys_dir)
        if created:
            logger.info("created host keys in %s", config.keys_dir)
    else:
        keys = load_host_keys(config.keys_dir)
    board = resolve_board(config)
    upstream = config.upstream
    if upstream is not None:
        if upstream.credentials is not None:
            read_creds(upstream.credentials)  # raises CredsError naming the file
        for path in (upstream.tls_ca_file, upstream.tls_cert_file, upstream.tls_key_file):
            if path is not None and not path.is_file():
                raise LeafConfigError(f"upstream TLS file {path} does not exist")
        for path in (upstream.tls_ca_file, upstream.tls_cert_file):
            if path is not None:
                check_pem_certificate(path)
    server = find_nats_server(config.leaf.nats_server)
    access = LocalAccess(
        agent_user=ensure_agent_user(config.host.data_dir).public_key,
        users=tuple(_local_user(user) for user in config.leaf.local_users),
        anonymous=config.leaf.allow_anonymous,
    )
    return Host(
        config,
        keys=keys,
        board=board,
        server=server,
        access=access,
        lock=lock,
        demo=demo,
        mqtt=_mqtt_listener(config),
    )


def _mqtt_listener(config: Config) -> MqttListener | None:
    """The MQTT listener with the MCUs' secrets read (CredsError names a bad file)."""
    leaf = config.leaf
    if leaf.mqtt_listen is None:
        return None
    users = tuple(
        MqttUser(user.name, read_password_file(user.secret_file), user.subjects)
        for user in leaf.mqtt_users
    )
    anonymous = not users and leaf.allow_anonymous and is_loopback(leaf.mqtt_listen.host)
    return MqttListener(str(leaf.mqtt_listen), users, anonymous=anonymous)


def _local_user(settings: LocalUserSettings) -> LocalUser:
    password = None
    if settings.password_file is not None:
        password = read_password_file(settings.password_file)
    return LocalUser(
        name=settings.name,
        password=password,
        nkey=settings.nkey,
        publish=settings.publish,
        subscribe=settings.subscribe,
    )


@contextlib.asynccontextmanager
async def run_host(
    config: Config, *, create_keys: bool = True, demo: bool = False
) -> AsyncIterator[Host]:
    """Run a host in this process until the block ends (the in-process test harness).

    Yields once the host is ready; leaving the block stops it in order and re-raises
    what made it fail, if anything did::

        async with run_host(config) as host:
            ... host.nats, host.registry, host.control ...
    """
    host = prepare_host(config, create_keys=create_keys, demo=demo)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[HostInfo] = loop.create_future()
    runner = asyncio.ensure_future(host.run(on_ready=ready.set_result))
    try:
        waiting: set[asyncio.Future[Any]] = {ready, runner}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            runner.result()  # raises what stopped it
            raise StateError("the host stopped before it was ready")
        yield host
    finally:
        host.request_stop()
        await runner
