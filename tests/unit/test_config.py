"""Config loading: defaults, TOML errors, unknown keys, bad values, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import HostPort, load_config, locate_config
from agent.errors import ConfigError
from agent.identity.keys import KeyKind, generate


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[host]\nname = 'edge-1'\n"), env={})
    assert config.host.name == "edge-1"
    assert config.host.lattice == "default"
    assert config.host.profile == "auto"
    assert config.leaf.listen == HostPort("127.0.0.1", 4222)
    assert config.leaf.monitor == HostPort("127.0.0.1", 8222)
    assert config.upstream is None
    assert config.trust.allow_unsigned is False


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[host]\ndata_dir = 'state'\n[upstream]\nurls = ['tls://connect.ngs.global']\n"
        "credentials = 'keys/ngs.creds'\n",
    )
    config = load_config(path, env={})
    assert config.host.data_dir == tmp_path.resolve() / "state"
    assert config.upstream is not None
    assert config.upstream.credentials == tmp_path.resolve() / "keys/ngs.creds"


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[host\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[leaf]\nlistn = '127.0.0.1:4222'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == "leaf.listn"
    assert "unknown key" in str(caught.value)
    assert str(path) in str(caught.value)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'actorz'"):
        load_config(write(tmp_path, "[actorz]\nx = 1\n"), env={})


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[leaf]\nlisten = 'localhost'\n", "leaf.listen", "host:port"),
        ("[leaf]\nlisten = '127.0.0.1:70000'\n", "leaf.listen", "1-65535"),
        ("[leaf]\nready_timeout_s = -1\n", "leaf.ready_timeout_s", "positive"),
        ("[leaf]\njetstream = 'yes'\n", "leaf.jetstream", "true or false"),
        ("[host]\nname = 'has space'\n", "host.name", "letters"),
        ("[host]\nprofile = 'pi9'\n", "host.profile", "unknown profile"),
        ("[trust]\ntrusted_issuers = ['NOPE']\n", "trust.trusted_issuers", "account key"),
        ("[budgets]\nmax_actors = 0\n", "budgets.max_actors", "positive"),
        ("[budgets]\nmax_actor = 3\n", "budgets.max_actor", "unknown key"),
        ("[upstream]\nurls = ['http://x']\n", "upstream.urls", "nats-leaf://"),
        ("[log]\nlevel = 'loud'\n", "log.level", "one of"),
        ("[log]\nformat = 'xml'\n", "log.format", "one of"),
        ("[upstream]\nurls = ['nats://u:pw@hub:7422']\n", "upstream.urls", "carries credentials"),
        ("[actors]\npinned_modules = ['abc']\n", "actors.pinned_modules", "SHA-256"),
        ("[actors]\nfile_root = ['/x']\n", "actors.file_root", "unknown key"),
        ("[[leaf.local_users]]\npassword_file = 'p'\n", "leaf.local_users[0].name", "required"),
        ("[[leaf.local_users]]\nname = 'a'\n", "leaf.local_users[0].password_file", "exactly one"),
        (
            "[[leaf.local_users]]\nname = 'a'\nnkey = 'UNOPE'\n",
            "leaf.local_users[0].nkey",
            "user key",
        ),
        (
            "[[leaf.local_users]]\nname = 'local'\npassword_file = 'p'\n",
            "leaf.local_users[0].name",
            "taken",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_trust_keys_must_be_the_right_kind(tmp_path: Path) -> None:
    account = generate(KeyKind.ACCOUNT).public_key
    cluster = generate(KeyKind.CLUSTER).public_key
    good = load_config(
        write(
            tmp_path, f"[trust]\ntrusted_issuers = ['{account}']\ncluster_issuers = ['{cluster}']\n"
        ),
        env={},
    )
    assert good.trust.trusted_issuers == (account,)
    with pytest.raises(ConfigError, match="cluster key"):
        load_config(write(tmp_path, f"[trust]\ncluster_issuers = ['{account}']\n"), env={})


def test_env_overrides_win_and_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "[leaf]\nlisten = '127.0.0.1:4222'\n")
    config = load_config(
        path,
        env={
            "LATTICE_EDGE_LEAF_LISTEN": "127.0.0.1:5222",
            "LATTICE_EDGE_HOST_NAME": "1234",  # TOML would read an int; the key wants text
            "LATTICE_EDGE_BUDGETS_MAX_ACTORS": "3",
            "LATTICE_EDGE_LEAF_JETSTREAM": "false",
            "LATTICE_EDGE_UPSTREAM_URLS": "nats-leaf://a:7422,nats-leaf://b:7422",
            "LATTICE_EDGE_CONFIG": "ignored-here",
            # The tooling's own variables are not config keys.
            "LATTICE_EDGE_TEST_ANYTHING": "x",
            "LATTICE_EDGE_DEB_CI_ARCHES": "arm64 armhf",
            "UNRELATED": "x",
        },
    )
    assert config.leaf.listen.port == 5222
    assert config.host.name == "1234"
    assert config.budgets == {"max_actors": 3}
    assert config.leaf.jetstream is False
    assert config.upstream is not None
    assert config.upstream.urls == ("nats-leaf://a:7422", "nats-leaf://b:7422")


def test_bad_env_override_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"LATTICE_EDGE_LEAF_LISTEN": "nowhere"})
    assert "LATTICE_EDGE_LEAF_LISTEN" in str(caught.value)
    with pytest.raises(ConfigError, match="LATTICE_EDGE_LEAFS_LISTEN"):
        load_config(None, env={"LATTICE_EDGE_LEAFS_LISTEN": "127.0.0.1:1"})


def test_locate_prefers_flag_then_env(tmp_path: Path) -> None:
    flag = write(tmp_path, "")
    other = tmp_path / "other.toml"
    other.write_text("")
    assert locate_config(flag, env={"LATTICE_EDGE_CONFIG": str(other)}) == flag
    assert locate_config(None, env={"LATTICE_EDGE_CONFIG": str(other)}) == other
    with pytest.raises(ConfigError, match="does not exist"):
        locate_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="LATTICE_EDGE_CONFIG"):
        locate_config(None, env={"LATTICE_EDGE_CONFIG": str(tmp_path / "gone.toml")})


def test_embedded_default_uses_its_own_data_dir() -> None:
    config = load_config(None, env={})
    assert config.source is None
    assert config.host.data_dir.name == "embedded"
    assert config.upstream is None


def test_embedded_default_pins_the_demo_instead_of_trusting_its_issuer() -> None:
    # Regression: the demo issuer's seed is public, so trusting it let anyone sign a
    # module the embedded default would run.
    import hashlib

    from agent.runtime.demo import DEMO_ISSUER, DEMO_SHA256, demo_actor_bytes

    config = load_config(None, env={})
    assert DEMO_ISSUER not in config.trust.trusted_issuers
    assert config.actors.pinned_modules == (DEMO_SHA256,)
    assert hashlib.sha256(demo_actor_bytes()).hexdigest() == DEMO_SHA256


def test_actor_file_roots_default_to_the_data_dir(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"[host]\ndata_dir = '{tmp_path}/d'\n"), env={})
    assert config.actors.file_roots == (tmp_path / "d" / "actors",)
    config = load_config(write(tmp_path, "[actors]\nfile_roots = ['mods', '/opt/a']\n"), env={})
    assert config.actors.file_roots == (tmp_path / "mods", Path("/opt/a"))


def test_local_users(tmp_path: Path) -> None:
    user = generate(KeyKind.USER).public_key
    config = load_config(
        write(
            tmp_path,
            "[leaf]\nallow_anonymous = false\n"
            "[[leaf.local_users]]\nname = 'sensors'\npassword_file = 'pw'\npublish = ['s.>']\n"
            f"[[leaf.local_users]]\nname = 'dash'\nnkey = '{user}'\n",
        ),
        env={},
    )
    sensors, dash = config.leaf.local_users
    assert not config.leaf.allow_anonymous
    assert sensors.password_file == tmp_path / "pw" and sensors.publish == ("s.>",)
    assert dash.nkey == user and dash.publish is None


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env={})
    with pytest.raises(AttributeError):
        config.log_level = "debug"  # type: ignore[misc]


def test_config_target_follows_the_same_precedence(tmp_path: Path) -> None:
    from agent.config import config_target, default_config_path

    named = tmp_path / "named.toml"
    assert config_target(named, env={"LATTICE_EDGE_CONFIG": "/x.toml"}) == named
    assert config_target(None, env={"LATTICE_EDGE_CONFIG": "/x.toml"}) == Path("/x.toml")
    assert config_target(None, env={}) == default_config_path()
