"""Control-interface request parsing and reply builders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from agent.errors import ControlRequestError
from agent.identity import jwt
from agent.identity.keys import KeyKind, generate
from agent.identity.wascap import claims_from_token
from agent.lattice import control_codec as cc
from agent.lattice.control_codec import (
    ActorAuction,
    ActorInfo,
    ActorInstanceInfo,
    HostInventory,
    LinkDefinition,
    LinkDelete,
    ProviderInfo,
    ScaleActor,
    StartActor,
    StopHost,
    UpdateActor,
)

ACTOR = "MBCFOPM6JW2APJLXJD3Z5O4CN7CPYJ2B4FTKLJUR5YR5MITIU7HD3WD5"
PROVIDER = "VAG3QITQQ2ODAOWB5TTQSDJ53XK3SHBEIFNK4AYJ5RKAX2UNSCAPHA5M"


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- requests ------------------------------------------------------------------------------


def test_start_actor_defaults_and_fields() -> None:
    assert cc.parse_start_actor(body({"actor_ref": "wasmcloud.azurecr.io/echo:0.3.4"})) == (
        StartActor("wasmcloud.azurecr.io/echo:0.3.4")
    )
    full = {"actor_ref": "r", "host_id": "N1", "count": 3, "annotations": {"a": "b"}}
    assert cc.parse_start_actor(body(full)) == StartActor("r", "N1", 3, {"a": "b"})
    assert cc.parse_start_actor(body({"actor_ref": "r", "count": 2.0})).count == 2


def test_scale_actor_both_forms() -> None:
    otp = cc.parse_scale_actor(body({"actor_id": ACTOR, "actor_ref": "r", "count": 0}))
    assert otp == ScaleActor(actor_ref="r", count=0, actor_id=ACTOR)
    rust = {"actor_ref": "r", "host_id": "N1", "count": 5, "annotations": {"k": "v"}}
    assert cc.parse_scale_actor(body(rust)) == ScaleActor("r", 5, None, "N1", {"k": "v"})


def test_update_stop_auction_links() -> None:
    upd = cc.parse_update_actor(body({"new_actor_ref": "r2", "actor_id": ACTOR}))
    assert upd == UpdateActor("r2", ACTOR)
    assert cc.parse_stop_host(b"") == StopHost()
    assert cc.parse_stop_host(body({})) == StopHost()
    assert cc.parse_stop_host(body({"timeout": 5000, "host_id": "N1"})) == StopHost(5000, "N1")
    auction = cc.parse_actor_auction(body({"actor_ref": "r", "constraints": {"os": "linux"}}))
    assert auction == ActorAuction("r", {"os": "linux"})
    put = {"actor_id": ACTOR, "contract_id": "wasmcloud:httpserver", "provider_id": PROVIDER}
    link = cc.parse_linkdef_put(body({**put, "values": {"PORT": "8080"}}))
    assert link == LinkDefinition(
        ACTOR, "wasmcloud:httpserver", PROVIDER, "default", {"PORT": "8080"}
    )
    gone = cc.parse_linkdef_del(body({"actor_id": ACTOR, "contract_id": "c", "link_name": "x"}))
    assert gone == LinkDelete(ACTOR, "c", "x")


def test_unknown_keys_are_ignored() -> None:
    assert cc.parse_start_actor(body({"actor_ref": "r", "future": [1, 2]})).actor_ref == "r"


PARSERS: list[Callable[[bytes], object]] = [
    cc.parse_start_actor,
    cc.parse_scale_actor,
    cc.parse_update_actor,
    cc.parse_stop_host,
    cc.parse_actor_auction,
    cc.parse_linkdef_put,
    cc.parse_linkdef_del,
]


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b'"str"', b"\xff\xfe\x00", b"{", b"NaN", b"[" * 5000]
)
def test_every_parser_rejects_garbage(parse: Callable[[bytes], object], raw: bytes) -> None:
    with pytest.raises(ControlRequestError):
        parse(raw)


@pytest.mark.parametrize("parse", PARSERS)
def test_oversize_body(parse: Callable[[bytes], object]) -> None:
    with pytest.raises(ControlRequestError, match="larger than"):
        parse(b" " * (cc.MAX_REQUEST_BYTES + 1))


@pytest.mark.parametrize(
    ("parse", "obj", "field"),
    [
        (cc.parse_start_actor, {}, "'actor_ref' is missing"),
        (cc.parse_start_actor, {"actor_ref": 5}, "'actor_ref' must be a string"),
        (cc.parse_start_actor, {"actor_ref": " "}, "'actor_ref' must not be empty"),
        (cc.parse_start_actor, {"actor_ref": "r", "count": 0}, "'count' must be between"),
        (cc.parse_start_actor, {"actor_ref": "r", "count": "2"}, "'count' must be an integer"),
        (cc.parse_start_actor, {"actor_ref": "r", "count": 1.5}, "'count' must be an integer"),
        (cc.parse_start_actor, {"actor_ref": "r", "count": True}, "'count' must be an integer"),
        (cc.parse_start_actor, {"actor_ref": "r", "count": 10**6}, "'count' must be between"),
        (cc.parse_start_actor, {"actor_ref": "r", "annotations": []}, "'annotations' must be"),
        (cc.parse_start_actor, {"actor_ref": "r", "annotations": {"a": 1}}, "'annotations.a'"),
        (cc.parse_start_actor, {"actor_ref": "r", "host_id": 1}, "'host_id' must be a string"),
        (cc.parse_scale_actor, {"actor_ref": "r"}, "'count' is missing"),
        (cc.parse_scale_actor, {"count": 1}, "'actor_ref' is missing"),
        (cc.parse_update_actor, {"actor_id": ACTOR}, "'new_actor_ref' is missing"),
        (cc.parse_stop_host, {"timeout": -1}, "'timeout'"),
        (cc.parse_stop_host, {"timeout": "soon"}, "'timeout'"),
        (cc.parse_actor_auction, {"constraints": {}}, "'actor_ref' is missing"),
        (cc.parse_actor_auction, {"actor_ref": "r", "constraints": "x"}, "'constraints'"),
        (cc.parse_linkdef_put, {"actor_id": ACTOR, "contract_id": "c"}, "'provider_id'"),
        (cc.parse_linkdef_put, {"contract_id": "c", "provider_id": PROVIDER}, "'actor_id'"),
        (
            cc.parse_linkdef_put,
            {"actor_id": ACTOR, "contract_id": "c", "provider_id": PROVIDER, "values": {"a": None}},
            "'values.a'",
        ),
        (cc.parse_linkdef_del, {"actor_id": ACTOR}, "'contract_id' is missing"),
        (
            cc.parse_linkdef_del,
            {"actor_id": ACTOR, "contract_id": "c", "link_name": 3},
            "link_name",
        ),
    ],
)
def test_errors_name_the_field(parse: Callable[[bytes], object], obj: Any, field: str) -> None:
    with pytest.raises(ControlRequestError, match=field.replace(".", r"\.")):
        parse(body(obj))


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ControlRequestError, match="'actor_ref'"):
        cc.parse_start_actor(b'{"actor_ref": "\\ud800"}')
    with pytest.raises(ControlRequestError, match="'constraints'"):
        cc.parse_actor_auction(b'{"actor_ref": "r", "constraints": {"\\udfff": "x"}}')
    # a proper pair is fine, and replies stay ASCII
    auction = cc.parse_actor_auction(b'{"actor_ref": "\\ud83d\\ude00", "constraints": {}}')
    assert auction.actor_ref == "\U0001f600"
    assert cc.encode_json(cc.auction_reply(auction, "N")).isascii()


def test_too_many_or_too_long_entries() -> None:
    many = {str(i): "v" for i in range(cc.MAX_ENTRIES + 1)}
    with pytest.raises(ControlRequestError, match="entries"):
        cc.parse_start_actor(body({"actor_ref": "r", "annotations": many}))
    with pytest.raises(ControlRequestError, match="longer than"):
        cc.parse_start_actor(body({"actor_ref": "r" * (cc.MAX_STRING + 1)}))


# --- replies ---------------------------------------------------------------------------------


def test_ack() -> None:
    assert cc.ack() == {"accepted": True, "error": ""}
    assert cc.ack(False, "unsupported subject") == {
        "accepted": False,
        "error": "unsupported subject",
    }
    assert cc.encode_json(cc.ack()) == b'{"accepted":true,"error":""}'


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (4, "4s"),
        (60, "1m"),
        (3600 + 5, "1h 5s"),
        (86_400 + 2 * 3600 + 3 * 60 + 4, "1day 2h 3m 4s"),
        (2 * 86_400, "2days"),
        (2_630_016, "1month"),
        (31_557_600 * 2 + 1, "2years 1s"),
        (12.9, "12s"),
        (-5, "0s"),
    ],
)
def test_uptime_human(seconds: float, text: str) -> None:
    assert cc.uptime_human(seconds) == text


def test_ping_reply() -> None:
    reply = cc.ping_reply(
        host_id="N1", issuer="C1", labels={"hostcore.os": "linux"}, friendly_name="pi-1",
        uptime_seconds=3725.4, version="0.1.0", cluster_issuers=["C1", "C2"], lattice="default",
        js_domain=None, ctl_host="127.0.0.1", rpc_host="127.0.0.1",
    )  # fmt: skip
    assert reply == {
        "id": "N1", "issuer": "C1", "labels": {"hostcore.os": "linux"}, "friendly_name": "pi-1",
        "uptime_seconds": 3725, "uptime_human": "1h 2m 5s", "version": "0.1.0",
        "cluster_issuers": "C1,C2", "js_domain": None, "ctl_host": "127.0.0.1",
        "rpc_host": "127.0.0.1", "prov_rpc_host": "127.0.0.1", "lattice_prefix": "default",
        "lattice": "default",
    }  # fmt: skip
    json.dumps(reply)


def inventory() -> HostInventory:
    inst = ActorInstanceInfo("i-1", revision=2, annotations={"wasmcloud.dev/appspec": "x"})
    return HostInventory(
        host_id="N1",
        issuer="C1",
        labels={"a": "b"},
        friendly_name="pi-1",
        version="0.1.0",
        uptime_seconds=61,
        actors=(ActorInfo(ACTOR, "reg/echo:1", "echo", (inst, ActorInstanceInfo("i-2"))),),
        providers=(ProviderInfo(PROVIDER, "wasmcloud:httpserver", "default", name="http"),),
    )


def test_inventory_json() -> None:
    inv = inventory().to_json()
    assert inv["host_id"] == "N1" and inv["uptime_human"] == "1m 1s"
    actor = inv["actors"][0]
    assert actor["id"] == ACTOR and actor["name"] == "echo" and len(actor["instances"]) == 2
    assert actor["instances"][0] == {
        "annotations": {"wasmcloud.dev/appspec": "x"},
        "instance_id": "i-1",
        "revision": 2,
        "image_ref": "reg/echo:1",
        "max_instances": 1,
    }
    assert inv["providers"][0]["contract_id"] == "wasmcloud:httpserver"
    json.dumps(inv)


def test_claims_entry_from_actor_claims() -> None:
    account = generate(KeyKind.ACCOUNT)
    module = generate(KeyKind.MODULE)
    token = jwt.encode(
        {
            "sub": module.public_key,
            "wascap": {
                "name": "Echo", "hash": "AB", "tags": ["a", "b"],
                "caps": ["wasmcloud:httpserver", "wasmcloud:builtin:logging"],
                "rev": 4, "ver": "0.3.4", "call_alias": "echo",
            },
            "wascap_revision": 3,
        },
        account,
        header={"typ": "jwt", "alg": "Ed25519"},
    )  # fmt: skip
    entry = cc.claims_entry(claims_from_token(token))
    assert entry == {
        "call_alias": "echo", "iss": account.public_key, "name": "Echo",
        "caps": "wasmcloud:httpserver,wasmcloud:builtin:logging", "rev": "4", "tags": "a,b",
        "version": "0.3.4", "sub": module.public_key, "contract_id": "",
    }  # fmt: skip
    assert all(isinstance(v, str) for v in entry.values())
    bare = jwt.encode({"sub": module.public_key, "wascap": {"hash": "AB"}}, account)
    assert cc.claims_entry(claims_from_token(bare))["rev"] == "0"
    assert cc.claims_reply([claims_from_token(bare)])["claims"][0]["caps"] == ""


def test_links_reply_and_id() -> None:
    link = LinkDefinition(ACTOR, "wasmcloud:httpserver", PROVIDER, "default", {"PORT": "8080"})
    expected_id = hashlib.sha256(f"{ACTOR}wasmcloud:httpserverdefault".encode()).hexdigest()
    assert link.id == expected_id.upper()
    assert cc.links_reply([link]) == {
        "links": [
            {
                "id": link.id,
                "actor_id": ACTOR,
                "provider_id": PROVIDER,
                "link_name": "default",
                "contract_id": "wasmcloud:httpserver",
                "values": {"PORT": "8080"},
            }
        ]
    }


def test_auction() -> None:
    labels = {"hostcore.os": "linux", "hostcore.arch": "aarch64", "site": "barn"}
    assert cc.labels_satisfy(labels, {})
    assert cc.labels_satisfy(labels, {"site": "barn", "hostcore.os": "linux"})
    assert not cc.labels_satisfy(labels, {"site": "shed"})
    assert not cc.labels_satisfy(labels, {"gpu": "yes"})
    auction = ActorAuction("reg/echo:1", {"site": "barn"})
    assert cc.auction_reply(auction, "N1") == {
        "actor_ref": "reg/echo:1",
        "constraints": {"site": "barn"},
        "host_id": "N1",
    }
