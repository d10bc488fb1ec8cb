"""The device's side of a fleet: ``lattice-edge enroll`` and the running agent's renewer.

Enrollment (:func:`enroll`) makes the device's user key on the device, proves it holds that
key and its host key by signing the fleet service's nonce, spends the token, and gets back
only public material: a user JWT named after its host key, the leaf URLs, the lattice, its
labels and the fleet's trusted actor and cluster issuers. It assembles ``upstream.creds``
itself (0600, atomic) and rewrites its config through the same loader ``run`` uses. The
order of writes keeps a failed enrollment from touching anything: everything is checked
first, then the creds, the config and the fleet state file are written. Until it succeeds,
the new user key waits in ``keys/enroll-pending.json``, so retrying with the same token
(after a lost reply) finishes the enrollment instead of failing with "already used".

The running agent's half — renewal at half-life and SIGHUP reloads — is
:mod:`agent.device_link`; both share the fleet state file ``<data>/fleet.json`` that
``lattice-edge status`` reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import signal
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.config import Config, load_config, locate_config
from agent.errors import ConfigError, CredsError, FleetRequestError, IdentityError, JWTError
from agent.fleet import protocol, subjects
from agent.fleet.tokens import parse_token
from agent.fleet_state import FLEET_STATE, write_fleet_state
from agent.fsutil import write_secret
from agent.identity import jwt
from agent.identity.host import load_host_keys
from agent.identity.keys import KeyKind, KeyPair, generate

__all__ = ["EnrollOutcome", "enroll", "fleet_of"]

logger = logging.getLogger("lattice_edge.enroll")

PENDING = "enroll-pending.json"
UPSTREAM_CREDS = "upstream.creds"
_FLEET_TAG = "lattice-edge-fleet:"


def fleet_of(token: str) -> str | None:
    """The fleet id a (bootstrap or device) user JWT is tagged with, if any."""
    try:
        claims = jwt.decode(token).claims
    except JWTError:
        return None
    nats_claims = claims.get("nats")
    tags = nats_claims.get("tags") if isinstance(nats_claims, dict) else None
    for tag in tags or []:
        if isinstance(tag, str) and tag.startswith(_FLEET_TAG):
            return tag.removeprefix(_FLEET_TAG).upper()
    return None


# --- enrollment -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrollOutcome:
    """What ``lattice-edge enroll`` did."""

    host_id: str
    fleet: str
    config_path: Path
    labels: dict[str, str]
    leaf_urls: tuple[str, ...]
    expires_at: int
    agent_pid: int | None  # the running agent that was asked to reload, if any
    notice: str | None = None


def _pending_key(config: Config, token_id: str) -> KeyPair:
    """The user key for this token: the one left by an unfinished attempt, else a new one."""
    path = config.keys_dir / PENDING
    try:
        pending = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(pending, dict) and pending.get("token_id") == token_id:
            key = KeyPair.from_seed(str(pending["seed"]))
            if key.kind is KeyKind.USER:
                return key
    except (OSError, ValueError, KeyError, IdentityError):
        pass
    key = generate(KeyKind.USER)
    write_secret(path, json.dumps({"token_id": token_id, "seed": key.seed}).encode())
    return key


def _facts(config: Config) -> dict[str, str]:
    return {
        "name": config.host.name,
        "profile": config.host.profile,
        "arch": platform.machine(),
        "os": platform.system().lower(),
        "agent_version": __version__,
    }


async def _exchange(
    url: str,
    bootstrap_path: Path,
    bootstrap_name: str,
    fleet: str,
    token: str,
    token_id: str,
    user: KeyPair,
    host: KeyPair,
    facts: dict[str, str],
    labels: dict[str, str],
) -> protocol.EnrollReply:
    from agent.fleet.request import REQUEST_TIMEOUT_S, request_json
    from agent.lattice.client import connect

    inbox = subjects.inbox_prefix(bootstrap_name)
    async with connect(url, creds=str(bootstrap_path), inbox_prefix=inbox) as client:
        challenge = await request_json(
            client.nats,
            subjects.enroll_challenge(fleet),
            protocol.canonical_json({"token_id": token_id}),
            what="enroll",
            timeout=REQUEST_TIMEOUT_S,
        )
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str) or len(nonce) > 512:
            raise FleetRequestError("enroll: the service sent no usable nonce", code=502)
        message = protocol.enroll_message(fleet, nonce, token_id, user.public_key, host.public_key)
        body = {
            "token": token,
            "nonce": nonce,
            "user_key": user.public_key,
            "host_key": host.public_key,
            "user_signature": protocol.b64(user.sign(message)),
            "host_signature": protocol.b64(host.sign(message)),
            "facts": facts,
            "labels": labels,
        }
        reply = await request_json(
            client.nats,
            subjects.enroll_complete(fleet),
            protocol.canonical_json(body),
            what="enroll",
            timeout=REQUEST_TIMEOUT_S,
        )
    try:
        return protocol.parse_enroll_reply(reply)
    except FleetRequestError as exc:
        raise FleetRequestError(
            f"enroll: the service's reply is unusable: {exc}", code=502
        ) from exc


def _merged_config_text(config_path: Path, reply: protocol.EnrollReply, creds_path: Path) -> str:
    from agent.provision import render_table

    raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    host = dict(raw.get("host") or {})
    host["lattice"] = reply.lattice
    host["labels"] = {**(host.get("labels") or {}), **reply.labels}
    trust = dict(raw.get("trust") or {})
    for key, values in (
        ("trusted_issuers", reply.trusted_issuers),
        ("cluster_issuers", reply.cluster_issuers),
    ):
        current = trust.get(key) or []
        if isinstance(current, str):
            current = [part.strip() for part in current.split(",") if part.strip()]
        trust[key] = list(dict.fromkeys([*current, *values]))
    upstream = dict(raw.get("upstream") or {})
    upstream["urls"] = list(reply.leaf_urls)
    upstream["credentials"] = str(creds_path)
    updated = {**raw, "host": host, "trust": trust, "upstream": upstream}
    header = (
        "Lattice Edge agent configuration, rewritten by 'lattice-edge enroll' "
        f"(fleet {reply.fleet}).\nEvery key is documented in docs/configuration.md."
    )
    return render_table(updated, header)


def _running_agent(config: Config) -> int | None:
    from agent.host import STATE_FILE
    from agent.running import pid_alive

    try:
        pid = json.loads((config.run_dir / STATE_FILE).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid_alive(pid) else None


def enroll(
    *,
    url: str,
    bootstrap_creds: Path,
    token_text: str,
    config_path: Path | None,
    labels: dict[str, str] | None = None,
) -> EnrollOutcome:
    """Enroll this device; see the module docstring. Raises on any failure, touching nothing."""
    located = locate_config(config_path)
    if located is None:
        raise ConfigError("this device is not initialised; run 'lattice-edge init' first")
    config = load_config(located)
    keys = load_host_keys(config.keys_dir)
    bootstrap = jwt.read_creds(bootstrap_creds)
    bootstrap_claims = jwt.decode(bootstrap.jwt).claims
    bootstrap_fleet = fleet_of(bootstrap.jwt)
    if bootstrap_fleet is None:
        raise CredsError(f"{bootstrap_creds} is not a fleet's bootstrap credential")
    token = parse_token(token_text)
    if token.fleet != bootstrap_fleet:
        raise FleetRequestError(
            f"the token is for fleet {token.fleet}, the bootstrap credential for fleet "
            f"{bootstrap_fleet}",
            code=403,
            reason="wrong-fleet",
        )
    requested = {**config.host.labels, **(labels or {})}
    protocol.check_labels(requested, "--label")
    user = _pending_key(config, token.token_id)
    reply = asyncio.run(
        _exchange(
            url, bootstrap_creds, str(bootstrap_claims.get("name", "")), token.fleet, str(token),
            token.token_id, user, keys.server, _facts(config), requested,
        )
    )  # fmt: skip
    from agent.fleet.request import check_jwt

    check_jwt(reply.user_jwt, user, keys.host_id)
    creds_path = config.keys_dir / UPSTREAM_CREDS
    text = _merged_config_text(located, reply, creds_path)
    from agent.provision import check_config_text, write_checked_config

    check_config_text(located, text)  # everything is checked before anything is written
    jwt.write_creds(creds_path, jwt.Creds(jwt=reply.user_jwt, seed=user.seed))
    new_config = write_checked_config(located, text)
    now = int(time.time())
    write_fleet_state(
        new_config,
        {"fleet": reply.fleet, "host_id": keys.host_id, "user_key": user.public_key,
         "enrolled_at": now, "last_renew": None, "status": "active", "error": None},
    )  # fmt: skip
    (config.keys_dir / PENDING).unlink(missing_ok=True)
    from agent.datadir import hand_over

    hand_over(new_config.host.data_dir, new_config.keys_dir, new_config.host.data_dir / FLEET_STATE)
    pid = _running_agent(config)
    notice = None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            notice = f"could not signal the running agent (pid {pid}): {exc}; restart it"
        else:
            if config.host.lattice != reply.lattice:
                notice = f"the lattice changed to '{reply.lattice}': restart the agent to join it"
    return EnrollOutcome(
        host_id=keys.host_id,
        fleet=reply.fleet,
        config_path=located,
        labels=reply.labels,
        leaf_urls=reply.leaf_urls,
        expires_at=reply.expires_at,
        agent_pid=pid,
        notice=notice,
    )
