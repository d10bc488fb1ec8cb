"""The MQTT listener: topic ↔ subject mapping, config validation, rendering per version."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import HostPort, load_config
from agent.errors import ConfigError, LeafConfigError
from agent.identity.keys import KeyKind, generate
from agent.leaf.access import LocalAccess, LocalUser
from agent.leaf.mqtt import (
    MqttListener,
    MqttUser,
    filter_to_subjects,
    is_loopback,
    mqtt_status,
    topic_to_subject,
)
from agent.leaf.render import LeafPlan, render

AGENT = generate(KeyKind.USER).public_key


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("sensors/esp32-1/temp", "sensors.esp32-1.temp"),
        ("a/b.c", "a.b//c"),  # nats-server: '.' in a level is '//'
        ("/a", "/.a"),
        ("a/", "a./"),
        ("a//b", "a./.b"),
    ],
)
def test_topics_map_to_subjects_as_nats_server_does(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject


@pytest.mark.parametrize(
    ("topic_filter", "subjects"),
    [
        ("mcu/esp1/#", ("mcu.esp1", "mcu.esp1.>")),
        ("cmd/+/led", ("cmd.*.led",)),
        ("cmd/esp1/+", ("cmd.esp1.*",)),
    ],
)
def test_filters_cover_subjects(topic_filter: str, subjects: tuple[str, ...]) -> None:
    assert filter_to_subjects(topic_filter) == subjects


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("#", "every subject"),
        ("a/#/b", "last level"),
        ("a/b+", "whole levels"),
        ("$SYS/x", "reserved"),
        ("a b", "whitespace"),
        ("a/*", "'*' or '>'"),
        ("", "empty"),
    ],
)
def test_bad_filters_are_named(topic: str, reason: str) -> None:
    with pytest.raises(ValueError, match="MQTT topic") as raised:
        filter_to_subjects(topic)
    assert reason in str(raised.value)


def test_wildcards_are_for_filters_only() -> None:
    with pytest.raises(ValueError, match="filters only"):
        topic_to_subject("a/+")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("192.168.1.4", False), ("::", False), ("edge.local", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _secret(tmp_path: Path, name: str = "esp1") -> Path:
    path = tmp_path / f"{name}.pw"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def _config(tmp_path: Path, leaf: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"[leaf]\n{leaf}")
    return path


def test_mqtt_users_default_to_their_own_topics(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    config = load_config(
        _config(
            tmp_path,
            "mqtt_listen = '0.0.0.0:1883'\n"
            f"[[leaf.mqtt_users]]\nname = 'esp1'\npassword_file = '{secret}'\n"
            f"[[leaf.mqtt_users]]\nname = 'esp2'\ntoken_file = '{secret}'\n"
            "topics = ['sensors/esp2/#', 'cmd/esp2/+', 'sensors/esp2/#']\n",
        ),
        env={},
    )
    assert config.leaf.mqtt_listen == HostPort("0.0.0.0", 1883)
    esp1, esp2 = config.leaf.mqtt_users
    assert esp1.topics == ("mcu/esp1/#",) and esp1.subjects == ("mcu.esp1", "mcu.esp1.>")
    assert esp1.secret_file == secret == esp2.secret_file
    assert esp2.subjects == ("sensors.esp2", "sensors.esp2.>", "cmd.esp2.*")


@pytest.mark.parametrize(
    ("leaf", "key", "fragment"),
    [
        ("mqtt_listen = '0.0.0.0:1883'\n", "leaf.mqtt_listen", "without authentication"),
        ("mqtt_listen = '192.168.1.2:1883'\n", "leaf.mqtt_listen", "beyond loopback"),
        ("jetstream = false\nmqtt_listen = '127.0.0.1:1883'\n", "leaf.mqtt_listen", "JetStream"),
        ("mqtt_listen = '127.0.0.1:4222'\n", "leaf.mqtt_listen", "must differ"),
        ("[[leaf.mqtt_users]]\nname = 'a'\npassword_file = 'x'\n", "leaf.mqtt_users",
         "need leaf.mqtt_listen"),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'a'\n",
         "leaf.mqtt_users[0].password_file", "exactly one"),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'a'\n"
         "password_file = 'x'\ntoken_file = 'y'\n", "leaf.mqtt_users[0].password_file",
         "exactly one"),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'a'\n"
         "password_file = 'x'\ntopics = ['#']\n", "leaf.mqtt_users[0].topics", "every subject"),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'a'\n"
         "password_file = 'x'\ntopics = []\n", "leaf.mqtt_users[0].topics", "at least one"),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'local'\n"
         "password_file = 'x'\n", "leaf.mqtt_users[0].name", "taken"),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'a b'\n"
         "password_file = 'x'\n", "leaf.mqtt_users[0].name", ""),
        ("mqtt_listen = '127.0.0.1:1883'\n[[leaf.mqtt_users]]\nname = 'a'\n"
         "password_file = 'x'\nuser = 'b'\n", "leaf.mqtt_users[0].user", "unknown"),
    ],
)  # fmt: skip
def test_bad_mqtt_settings_name_the_key(tmp_path: Path, leaf: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_config(tmp_path, leaf), env={})
    assert raised.value.key == key
    assert fragment in str(raised.value)


def test_an_mcu_cannot_share_a_local_users_name(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    text = (
        "mqtt_listen = '127.0.0.1:1883'\n"
        f"[[leaf.local_users]]\nname = 'app'\npassword_file = '{secret}'\n"
        f"[[leaf.mqtt_users]]\nname = 'app'\npassword_file = '{secret}'\n"
    )
    with pytest.raises(ConfigError, match="also a local user"):
        load_config(_config(tmp_path, text), env={})


def _plan(tmp_path: Path, mqtt: MqttListener | None, *, jetstream: bool = True) -> LeafPlan:
    return LeafPlan(
        server_name="edge-1",
        listen=HostPort("127.0.0.1", 4222),
        monitor=HostPort("127.0.0.1", 8222),
        max_payload=1 << 20,
        jetstream=jetstream,
        jetstream_domain="edge",
        store_dir=tmp_path,
        jetstream_max_memory_mb=64,
        jetstream_max_file_mb=256,
        access=LocalAccess(
            agent_user=AGENT, users=(LocalUser("app", password="pw", publish=("app.>",)),)
        ),
        mqtt=mqtt,
    )


ESP1 = MqttUser("esp1", "s3cret", ("mcu.esp1", "mcu.esp1.>"))


@pytest.mark.parametrize("version", [(2, 9, 10), (2, 15, 1)])
def test_rendered_mqtt_confines_mcus_and_keeps_others_off_mqtt(
    tmp_path: Path, version: tuple[int, int, int]
) -> None:
    text = render(_plan(tmp_path, MqttListener("0.0.0.0:1883", (ESP1,))), version).text
    assert 'mqtt: {\n  listen: "0.0.0.0:1883"\n}' in text
    mcu = text[text.index('user: "esp1"') :]
    mcu = mcu[: mcu.index("}]")]
    assert 'publish: {\n        allow: ["mcu.esp1", "mcu.esp1.>"]' in mcu
    qos1 = ', "$MQTT.sub.>"' if version < (2, 10, 0) else ""
    assert f'subscribe: {{\n        allow: ["mcu.esp1", "mcu.esp1.>"{qos1}]' in mcu
    assert 'allowed_connection_types: ["MQTT"]' in text
    # The anonymous user and local users: NATS only, so anonymous MQTT is refused.
    assert text.count('allowed_connection_types: ["STANDARD", "WEBSOCKET"]') == 2
    assert 'no_auth_user: "local"' in text


def test_anonymous_mqtt_only_where_the_listener_allows_it(tmp_path: Path) -> None:
    text = render(_plan(tmp_path, MqttListener("127.0.0.1:1883", anonymous=True)), (2, 15, 1))
    assert 'allowed_connection_types: ["STANDARD", "WEBSOCKET", "MQTT"]' in text.text


def test_without_mqtt_nothing_changes(tmp_path: Path) -> None:
    text = render(_plan(tmp_path, None), (2, 15, 1)).text
    assert "mqtt: {" not in text and "allowed_connection_types" not in text


def test_mqtt_without_jetstream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LeafConfigError, match="JetStream"):
        render(_plan(tmp_path, MqttListener("127.0.0.1:1883"), jetstream=False), (2, 15, 1))


def test_the_password_stays_out_of_reprs() -> None:
    assert "s3cret" not in repr(ESP1)


def test_status_lists_only_mqtt_connections() -> None:
    connz = {
        "connections": [
            {"cid": 1, "ip": "127.0.0.1", "port": 5000, "authorized_user": "agent"},
            {"cid": 2, "ip": "10.0.0.7", "port": 5001, "authorized_user": "esp1",
             "mqtt_client": "esp32-1", "in_msgs": 4, "out_msgs": 1},
        ]
    }  # fmt: skip
    assert mqtt_status("0.0.0.0:1883", connz) == {
        "listen": "0.0.0.0:1883",
        "connections": 1,
        "clients": [
            {"client_id": "esp32-1", "user": "esp1", "address": "10.0.0.7:5001",
             "in_msgs": 4, "out_msgs": 1},
        ],
    }  # fmt: skip
    assert mqtt_status("x", None)["connections"] == 0


def test_status_text_escapes_what_mcus_chose() -> None:
    from agent.report import format_status

    client = {"user": "esp1", "client_id": "a\x1b[31mb\nfake: line", "address": "10.0.0.7:5",
              "in_msgs": 1, "out_msgs": 0}  # fmt: skip
    report = {
        "agent": {"up": True, "pid": 1, "host_id": "N", "client_url": "nats://x"},
        "leaf": {
            "up": True,
            "mqtt": {"listen": "0.0.0.0:1883", "connections": 1, "clients": [client]},
        },
        "upstream": {"configured": []},
        "device": {
            "temperature_c": None,
            "load_average": [0, 0, 0],
            "memory_available_mb": 1,
            "memory_total_mb": 2,
            "cpu_percent": 0,
            "disk_free_mb": 1,
            "disk_percent": 1,
        },
        "profile": "p",
        "health": {
            "subscriptions": [
                {
                    "actor_id": "MA",
                    "state": "subscribed",
                    "subjects": ["mcu.>"],
                    "delivered": 5,
                    "dropped": 2,
                    "errors": 1,
                },
                {"actor_id": "MB", "state": "waiting for the actor"},
            ]
        },
    }
    text = format_status(report)
    assert "mqtt     : 0.0.0.0:1883, 1 connection(s)" in text
    assert "(client a\\x1b[31mb\\nfake: line)" in text and "\x1b" not in text
    assert "messages : MA subscribed mcu.>: 5 delivered, 2 dropped, 1 errors" in text
    assert "messages : MB waiting for the actor" in text
