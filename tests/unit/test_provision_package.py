"""``init`` against what the Debian package installs: the placeholder config and a data
directory owned by the ``lattice-edge`` service user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import load_config
from agent.datadir import hand_over
from agent.errors import ConfigError
from agent.identity.local import agent_user_path
from agent.provision import (
    InitRequest,
    initialise,
    is_placeholder,
    render_config,
)

PLACEHOLDER = Path(__file__).resolve().parents[2] / "packaging" / "deb" / "agent.toml"
SERVICE_UID = 65534  # 'nobody' stands in for the package's system user


def request(tmp_path: Path, **changes: object) -> InitRequest:
    fields: dict[str, object] = {
        "config_path": tmp_path / "etc" / "agent.toml",
        "data_dir": tmp_path / "data",
    }
    fields.update(changes)
    return InitRequest(**fields)  # type: ignore[arg-type]


def install_placeholder(tmp_path: Path) -> Path:
    target = tmp_path / "etc" / "agent.toml"
    target.parent.mkdir(parents=True)
    target.write_text(PLACEHOLDER.read_text())
    return target


def test_the_packaged_placeholder_is_recognised_and_loads() -> None:
    text = PLACEHOLDER.read_text()
    assert is_placeholder(text)
    assert load_config(PLACEHOLDER, env={}).host.name == "lattice-edge"  # comments only


def test_real_configs_are_not_placeholders(tmp_path: Path) -> None:
    assert not is_placeholder(render_config(request(tmp_path), None))
    assert not is_placeholder("")
    marker = PLACEHOLDER.read_text().splitlines()[0]
    assert not is_placeholder(f'{marker}\n[host]\nname = "kept"\n')


def test_init_fills_the_placeholder_without_force(tmp_path: Path) -> None:
    config = install_placeholder(tmp_path)
    first = initialise(request(tmp_path, name="greenhouse-7"))
    assert first.message == "initialised"
    assert 'name = "greenhouse-7"' in config.read_text()
    again = initialise(request(tmp_path, name="greenhouse-7"))
    assert again.message == "already initialised" and again.host_id == first.host_id
    # Once filled, the file is the user's: other answers still need --force.
    with pytest.raises(ConfigError, match="--force"):
        initialise(request(tmp_path, name="other"))
    assert 'name = "greenhouse-7"' in config.read_text()


def test_a_failed_init_puts_the_placeholder_back(tmp_path: Path) -> None:
    config = install_placeholder(tmp_path)
    # The written config fails the loader's check, so init rolls it back.
    with pytest.raises(ConfigError, match="unknown profile"):
        initialise(request(tmp_path, profile="no-such-board"))
    assert config.read_text() == PLACEHOLDER.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners needs root (CI is root)")
def test_root_hands_the_keys_to_the_data_dirs_owner(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, SERVICE_UID, SERVICE_UID)
    initialise(request(tmp_path))
    keys = data / "keys"
    seed = agent_user_path(data)
    written = [keys, *keys.iterdir(), seed.parent, seed]
    for path in written:
        assert (path.stat().st_uid, path.stat().st_gid) == (SERVICE_UID, SERVICE_UID), path
    assert (keys / "host.nk").stat().st_mode & 0o777 == 0o600
    assert not [p for p in data.rglob("*") if p.lstat().st_uid == 0]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners needs root (CI is root)")
def test_hand_over_leaves_root_owned_data_dirs_and_symlink_targets_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = data / "keys"
    keys.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    (keys / "link").symlink_to(outside)
    hand_over(data, keys)  # root owns the data dir: nothing to do
    assert keys.stat().st_uid == 0
    os.chown(data, SERVICE_UID, SERVICE_UID)
    hand_over(data, keys)
    assert keys.stat().st_uid == SERVICE_UID
    assert (keys / "link").lstat().st_uid == SERVICE_UID
    assert outside.stat().st_uid == 0  # the link's target is not touched


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners needs root (CI is root)")
def test_hand_over_does_not_walk_into_a_symlinked_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    elsewhere = tmp_path / "etc-like"
    elsewhere.mkdir()
    (elsewhere / "shadow").write_text("root's")
    (data / "local").symlink_to(elsewhere, target_is_directory=True)
    os.chown(data, SERVICE_UID, SERVICE_UID)
    hand_over(data, data / "local")  # as a root, too: a symlink is never opened
    assert (elsewhere / "shadow").stat().st_uid == 0
    assert elsewhere.stat().st_uid == 0
    assert (data / "local").lstat().st_uid == SERVICE_UID


def test_init_keeps_the_packaged_configs_mode_and_owner(tmp_path: Path) -> None:
    config = install_placeholder(tmp_path)
    config.chmod(0o644)  # as the package installs it, so the service user can read it
    if os.geteuid() == 0:
        os.chown(config, 0, SERVICE_UID)
    before = config.stat()
    initialise(request(tmp_path, name="greenhouse-7"))
    after = config.stat()
    assert 'name = "greenhouse-7"' in config.read_text()
    assert after.st_mode & 0o777 == 0o644
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners needs root (CI is root)")
def test_hand_over_leaves_hard_links_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    roots = tmp_path / "roots-file"
    roots.write_text("root's")
    os.link(roots, data / "linked")
    os.chown(data, SERVICE_UID, SERVICE_UID)
    hand_over(data, data / "linked", data)
    assert roots.stat().st_uid == 0
