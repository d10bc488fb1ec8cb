"""The fleet's pure parts: durations, tokens, the wire format, the templates, account JWT
amendments, fleet.toml and the config rewrite ``enroll`` does."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import load_config
from agent.errors import ConfigError, FleetDirError, FleetRequestError, JWTError
from agent.fleet import protocol, subjects, templates
from agent.fleet.duration import format_duration, parse_duration
from agent.fleet.fleetdir import FleetInit, init_fleet, load_fleet
from agent.fleet.tokens import new_token, parse_token
from agent.identity import jwt
from agent.identity.keys import KeyKind, generate
from agent.provision import render_table, write_checked_config
from agent.report import format_status


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("2m", 120), ("24h", 86400), ("7d", 604800)]
)
def test_durations_read_as_written(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "1w", "-3s", "0s", "1.5h", "3 d", "99999999999d"])
def test_bad_durations_say_what_a_duration_is(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|zero|ten years"):
        parse_duration(text)


def test_tokens_round_trip_and_hide_their_secret() -> None:
    token = new_token("ABCDEFGHIJKL")
    again = parse_token(str(token))
    assert again == token and again.matches(token.secret_sha256)
    assert token.secret not in repr(token) and token.secret not in token.secret_sha256
    assert not again.matches(new_token("ABCDEFGHIJKL").secret_sha256)
    with pytest.raises(FleetRequestError, match="malformed") as caught:
        parse_token(str(token)[:-1] + "!")
    assert token.secret[:-1] not in str(caught.value)


def test_subjects_confine_names_to_one_token() -> None:
    fleet = "ABCDEFGHIJKL"
    host = generate(KeyKind.SERVER).public_key
    assert subjects.renew(fleet, host) == f"lattice-edge.fleet.{fleet}.device.{host}.renew"
    for bad in ("abc", "ABCDEFGHIJK*", "ABCDEFGHIJKL.>"):
        with pytest.raises(FleetRequestError):
            subjects.prefix(bad)
    with pytest.raises(FleetRequestError):
        subjects.renew(fleet, "N.>")
    with pytest.raises(FleetRequestError):
        subjects.admin(fleet, "drop.tables")


def test_the_device_template_names_its_own_subjects_only() -> None:
    template = templates.device_template(lattice="prod", fleet="ABCDEFGHIJKL", js_domain="hub")
    sub, pub = template["sub"]["allow"], template["pub"]["allow"]
    assert (
        "wasmbus.ctl.prod.cmd.{{name()}}.*" in sub and "wasmbus.ctl.prod.get.{{name()}}.inv" in sub
    )
    assert "_INBOX_LE.{{name()}}.>" in sub and "_INBOX.>" not in sub
    assert not any(s.startswith(("lattice-edge.fleet.", "$JS", "$KV")) for s in sub)
    assert "lattice-edge.fleet.ABCDEFGHIJKL.device.{{name()}}.>" in pub
    assert "$JS.hub.API.STREAM.INFO.OBJ_LEFLEET_ABCDEFGHIJKL_ACTORS" in pub
    assert not any("KV_" in s or "DELETE" in s or "PURGE" in s for s in pub)
    assert "lattice-edge.fleet.ABCDEFGHIJKL.admin.>" in template["pub"]["deny"]
    boot = templates.bootstrap_template(fleet="ABCDEFGHIJKL")
    assert boot["pub"]["allow"] == [
        "lattice-edge.fleet.ABCDEFGHIJKL.enroll.challenge",
        "lattice-edge.fleet.ABCDEFGHIJKL.enroll.complete",
    ]
    assert boot["allowed_connection_types"] == ["STANDARD", "WEBSOCKET"]


def test_nsc_commands_quote_subjects_for_the_shell() -> None:
    entry = jwt.user_scope(
        generate(KeyKind.ACCOUNT).public_key,
        templates.DEVICE_ROLE,
        templates.device_template(lattice="default", fleet="ABCDEFGHIJKL", js_domain="hub"),
    )
    commands = templates.nsc_commands([entry])
    assert commands[0].startswith('nsc edit account --name "$FLEET_ACCOUNT" --sk A')
    assert "--role lattice-edge-device" in commands[1]
    assert "'wasmbus.evt.default,wasmbus.evt.default.>," in commands[1]  # $JS… stays literal
    assert commands[-1] == 'nsc push --account "$FLEET_ACCOUNT"'


def test_amending_an_account_adds_keys_and_revocations_and_moves_iat_forward() -> None:
    operator, account = generate(KeyKind.OPERATOR), generate(KeyKind.ACCOUNT)
    token = jwt.encode(jwt.account_claims(account.public_key, "APP"), operator)
    entry = jwt.user_scope(generate(KeyKind.ACCOUNT).public_key, "r", {"pub": {"allow": ["a"]}})
    once = jwt.amend_account(token, operator, signing_keys=(entry,))
    twice = jwt.amend_account(once, operator, signing_keys=(entry,), revocations={"UX": 10})
    claims = jwt.verify(twice, issuer_kind=KeyKind.OPERATOR).claims
    assert claims["nats"]["signing_keys"] == [entry]  # replaced, not duplicated
    assert claims["nats"]["revocations"] == {"UX": 10}
    assert claims["iat"] > jwt.decode(once).claims["iat"] > jwt.decode(token).claims["iat"] - 1
    with pytest.raises(JWTError):
        jwt.amend_account(token, account)
    user_jwt = jwt.encode(jwt.user_claims(generate(KeyKind.USER).public_key, "u"), operator)
    with pytest.raises(JWTError, match="not an account"):
        jwt.amend_account(user_jwt, operator)


def test_scoped_user_claims_carry_no_permissions() -> None:
    claims = jwt.scoped_user_claims("UKEY", "NHOST", issuer_account="AACC", expires_at=5,
                                    tags=("t:1",))  # fmt: skip
    assert claims["nats"] == {"type": "user", "version": 2, "issuer_account": "AACC",
                              "tags": ["t:1"]}  # fmt: skip
    assert claims["name"] == "NHOST" and claims["exp"] == 5


# --- the wire format -------------------------------------------------------------------------


def enroll_body(**changes: object) -> bytes:
    user, host = generate(KeyKind.USER), generate(KeyKind.SERVER)
    body: dict[str, object] = {
        "token": "LE1.X", "nonce": "n", "user_key": user.public_key, "host_key": host.public_key,
        "user_signature": protocol.b64(bytes(64)), "host_signature": protocol.b64(bytes(64)),
        "facts": {"arch": "aarch64"}, "labels": {"site": "a"},
    }  # fmt: skip
    body.update(changes)
    return json.dumps(body).encode()


def test_a_well_formed_enroll_request_parses() -> None:
    request = protocol.parse_enroll(enroll_body())
    assert request.labels == {"site": "a"} and request.facts == {"arch": "aarch64"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": {"site": 3}}, "label 'site' must be a string"),
        ({"labels": {"a b": "c"}}, "is not a label name"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "more than 64"),
        ({"host_key": generate(KeyKind.USER).public_key}, "'host_key' is not a public server"),
        ({"user_signature": "!!"}, "not base64url"),
        ({"user_signature": protocol.b64(b"short")}, "64-byte"),
        ({"facts": {"x": 1}}, "'facts' must map"),
        ({"nonce": None}, "'nonce' is missing"),
        ({"token": "a\u0000b"}, "control"),
        ({"extra": True}, "unknown field 'extra'"),
    ],
)
def test_bad_enroll_requests_name_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(FleetRequestError, match=message) as caught:
        protocol.parse_enroll(enroll_body(**changes))
    assert caught.value.code == 400


@given(st.binary(max_size=300))
def test_parsers_refuse_arbitrary_bytes_with_a_400(data: bytes) -> None:
    for parse in (protocol.parse_challenge, protocol.parse_enroll, protocol.parse_renew,
                  protocol.parse_admin):  # fmt: skip
        try:
            parse(data)
        except FleetRequestError as exc:
            assert exc.code == 400 and str(exc)


def test_signed_messages_bind_every_field() -> None:
    key = generate(KeyKind.USER)
    message = protocol.enroll_message("F", "nonce", "TID", "U", "N")
    signature = key.sign(message)
    assert protocol.signature_ok(key.public_key, message, signature)
    for other in (("G", "nonce", "TID", "U", "N"), ("F", "nonce2", "TID", "U", "N"),
                  ("F", "nonce", "TID", "U", "M")):  # fmt: skip
        assert not protocol.signature_ok(key.public_key, protocol.enroll_message(*other), signature)
    admin = protocol.admin_message("F", "token.create", 1, "n", {"count": 2, "labels": {}})
    assert admin == protocol.admin_message("F", "token.create", 1, "n", {"labels": {}, "count": 2})


def test_error_replies_become_fleet_request_errors() -> None:
    error = FleetRequestError("the device was revoked", code=403, reason="revoked")
    with pytest.raises(FleetRequestError, match="renew: the device was revoked") as caught:
        protocol.parse_reply(
            protocol.error_body(error), {"Nats-Service-Error-Code": "403"}, "renew"
        )
    assert caught.value.code == 403 and caught.value.reason == "revoked"
    with pytest.raises(FleetRequestError, match="not JSON"):
        protocol.parse_reply(b"\x00garbage", None, "renew")
    assert protocol.parse_reply(b'{"a": 1}', None, "x") == {"a": 1}


# --- fleet.toml ------------------------------------------------------------------------------


def make_fleet(tmp_path: Path) -> Path:
    account, user = generate(KeyKind.ACCOUNT), generate(KeyKind.USER)
    creds = tmp_path / "hub.creds"
    jwt.write_creds(creds, jwt.Creds(jwt.encode(jwt.user_claims(user.public_key, "svc"), account),
                                     user.seed))  # fmt: skip
    result = init_fleet(
        FleetInit(path=tmp_path / "fleet", hub_urls=("nats://hub:4222",), creds=creds,
                  account=account.public_key, leaf_urls=("nats-leaf://hub:7422",), js_domain="hub",
                  credential_ttl_s=3600)
    )  # fmt: skip
    assert result.to_json()["signing_keys"] == result.fleet.signing_keys
    return result.fleet.path


def test_fleet_init_writes_a_private_directory_and_refuses_to_run_twice(tmp_path: Path) -> None:
    path = make_fleet(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o700
    for name in (
        "device-signing.nk",
        "bootstrap-signing.nk",
        "admin.nk",
        "hub.creds",
        "fleet.toml",
    ):
        assert (path / name).stat().st_mode & 0o777 == 0o600, name
    fleet = load_fleet(path)
    assert fleet.credential_ttl_s == 3600 and fleet.device_signer().public_key == fleet.device_key
    with pytest.raises(FleetDirError, match="already holds a fleet"):
        make_fleet(tmp_path)


def test_fleet_init_checks_the_creds_belong_to_the_account(tmp_path: Path) -> None:
    account, user = generate(KeyKind.ACCOUNT), generate(KeyKind.USER)
    creds = tmp_path / "other.creds"
    jwt.write_creds(creds, jwt.Creds(jwt.encode(jwt.user_claims(user.public_key, "x"), account),
                                     user.seed))  # fmt: skip
    with pytest.raises(FleetDirError, match="is a user of account"):
        init_fleet(FleetInit(path=tmp_path / "f", hub_urls=("nats://h:1",), creds=creds,
                             account=generate(KeyKind.ACCOUNT).public_key,
                             leaf_urls=("nats-leaf://h:2",), js_domain="hub"))  # fmt: skip
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('credential_ttl = "1h"', 'credential_ttl = "soon"'), "fleet.credential_ttl"),
        (('js_domain = "hub"', 'js_domain = "a b"'), "fleet.js_domain"),
        (("[keys]", "[keys]\nextra = 1"), "unknown key 'keys.extra'"),
        (("[fleet]", "[fleet]\nid2 = 1"), "unknown key 'fleet.id2'"),
    ],
)
def test_a_damaged_fleet_toml_names_the_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = make_fleet(tmp_path)
    toml = path / "fleet.toml"
    toml.write_text(toml.read_text().replace(*edit))
    with pytest.raises(FleetDirError, match=message):
        load_fleet(path)
    with pytest.raises(FleetDirError, match="holds no fleet"):
        load_fleet(tmp_path / "nowhere")


# --- the config rewrite ----------------------------------------------------------------------


def test_render_table_round_trips_through_the_loader(tmp_path: Path) -> None:
    raw = {
        "host": {"name": "pi-7", "data_dir": str(tmp_path / "d"), "labels": {"site": 'a b"c'}},
        "leaf": {"listen": "127.0.0.1:4333", "jetstream": False, "ready_timeout_s": 2.5},
        "trust": {"trusted_issuers": [generate(KeyKind.ACCOUNT).public_key]},
        "budgets": {"heartbeat_interval_s": 1.0, "max_actors": 4},
    }
    text = render_table(raw, "written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    assert tomllib.loads(text) == raw
    config = write_checked_config(tmp_path / "agent.toml", text)
    assert config.host.labels == {"site": 'a b"c'} and config.budgets["max_actors"] == 4
    assert load_config(tmp_path / "agent.toml", env={}) == config


def test_a_config_the_loader_refuses_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[host]\nname = "ok"\n')
    with pytest.raises(ConfigError, match=r"leaf\.listen"):
        write_checked_config(path, render_table({"leaf": {"listen": "nowhere"}}, "x"))
    assert path.read_text() == '[host]\nname = "ok"\n'


def test_status_shows_revoked_credentials() -> None:
    report = {
        "agent": {"up": True, "pid": 7, "host_id": "N", "client_url": "nats://x"},
        "leaf": {"up": True, "version": "2.15.1"},
        "upstream": {"configured": ["nats-leaf://h:1"], "connected": False},
        "credentials": {"status": "revoked", "fleet": "F", "expires_at": 10, "error": "revoked"},
        "profile": "pi4b",
        "device": {"temperature_c": None, "load_average": [0.0, 0.0, 0.0], "cpu_percent": 1,
                   "memory_available_mb": 1, "memory_total_mb": 2, "disk_free_mb": 3,
                   "disk_percent": 4},
    }  # fmt: skip
    assert "credentials: revoked (revoked) (fleet F)" in format_status(report)
    report["credentials"] = {"status": "active", "fleet": "F", "expires_at": 0, "error": None}
    assert "credentials: valid until 1970-01-01 00:00:00 UTC (fleet F)" in format_status(report)
