"""The leaf's local listener: the authorization block, the agent user's seed, password files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import CredsError
from agent.identity.keys import KeyKind, generate
from agent.identity.local import agent_user_path, ensure_agent_user, read_password_file
from agent.leaf.access import (
    ANONYMOUS_USER,
    LocalAccess,
    LocalUser,
    agent_inbox_prefix,
    authorization_table,
)
from agent.leaf.render import to_conf

AGENT = generate(KeyKind.USER).public_key


def _users(table: dict[str, object]) -> list[dict[str, object]]:
    authorization = table["authorization"]
    assert isinstance(authorization, dict)
    users = authorization["users"]
    assert isinstance(users, list)
    return users


def test_agent_user_is_unrestricted_and_anonymous_is_mapped() -> None:
    table = authorization_table(LocalAccess(agent_user=AGENT))
    agent, anonymous = _users(table)
    assert agent == {"nkey": AGENT}
    assert table["no_auth_user"] == ANONYMOUS_USER == anonymous["user"]
    permissions = anonymous["permissions"]
    assert isinstance(permissions, dict)
    for subject in ("wasmbus.>", "$JS.>", "$KV.>", "$O.>", "lattice-edge.>", "_INBOX_LE.>"):
        assert subject in permissions["publish"]["deny"]
    for subject in ("wasmbus.rpc.>", "wasmbus.ctl.>", "$JS.>", "_INBOX_LE.>"):
        assert subject in permissions["subscribe"]["deny"]
    assert "wasmbus.evt.>" not in permissions["subscribe"]["deny"]  # events stay readable


def test_no_anonymous_access_when_turned_off() -> None:
    table = authorization_table(LocalAccess(agent_user=AGENT, anonymous=False))
    assert "no_auth_user" not in table
    assert [u.get("user") for u in _users(table)] == [None]


def test_configured_users_get_their_allow_lists_and_never_the_agent_inbox() -> None:
    nkey = generate(KeyKind.USER).public_key
    table = authorization_table(
        LocalAccess(
            agent_user=AGENT,
            users=(
                LocalUser("sensors", password="pw", publish=("sensors.>",)),
                LocalUser("dash", nkey=nkey, subscribe=("wasmbus.evt.>",)),
            ),
        )
    )
    sensors, dash = _users(table)[2:]
    assert sensors["user"] == "sensors" and sensors["password"] == "pw"
    assert sensors["permissions"]["publish"] == {"allow": ["sensors.>"], "deny": ["_INBOX_LE.>"]}
    assert "wasmbus.rpc.>" in sensors["permissions"]["subscribe"]["deny"]  # default rules
    assert dash == {"nkey": nkey, "permissions": dash["permissions"]}
    assert dash["permissions"]["subscribe"]["allow"] == ["wasmbus.evt.>"]
    assert "authorization" in to_conf(table)  # renders as nats-server config


def test_agent_inbox_prefix_is_per_host() -> None:
    assert agent_inbox_prefix("NABC") == "_INBOX_LE.NABC"


def test_agent_user_seed_is_private_and_stable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key = ensure_agent_user(tmp_path)
    finally:
        os.umask(old)
    path = agent_user_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # not in the service group here
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert ensure_agent_user(tmp_path).public_key == key.public_key


def test_password_files_must_be_private_and_one_line(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("s3cret\n")
    good.chmod(0o600)
    assert read_password_file(good) == "s3cret"
    good.chmod(0o644)
    with pytest.raises(CredsError, match="readable by others"):
        read_password_file(good)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CredsError, match="not a regular file"):
        read_password_file(fifo)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(CredsError, match="one line"):
        read_password_file(empty)
