"""CloudEvents envelope and the data of each lattice event."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest

from agent.errors import LatticeError
from agent.lattice import events as ev
from agent.lattice.control_codec import (
    ActorInfo,
    ActorInstanceInfo,
    HostInventory,
    LinkDefinition,
    LinkDelete,
    ProviderInfo,
)
from agent.lattice.invocation import WasmCloudEntity

HOST = "NBIRS5PXKZZXKBSJNAFFW4HNQ6O7OBMX3H6XGHJRLXVCHEMLSXGO5F3H"
ACTOR = "MBCFOPM6JW2APJLXJD3Z5O4CN7CPYJ2B4FTKLJUR5YR5MITIU7HD3WD5"
PROVIDER = "VAG3QITQQ2ODAOWB5TTQSDJ53XK3SHBEIFNK4AYJ5RKAX2UNSCAPHA5M"


def test_envelope() -> None:
    event = ev.cloud_event("host_started", HOST, {"a": 1}, now=1_700_000_000.25, event_id="e-1")
    assert event == {
        "specversion": "1.0",
        "type": "com.wasmcloud.lattice.host_started",
        "source": HOST,
        "id": "e-1",
        "time": "2023-11-14T22:13:20.250000Z",
        "datacontenttype": "application/json",
        "data": {"a": 1},
    }
    json.dumps(event)


def test_envelope_defaults() -> None:
    event = ev.cloud_event("com.wasmcloud.lattice.host_heartbeat", HOST, {})
    assert event["type"] == "com.wasmcloud.lattice.host_heartbeat"
    assert uuid.UUID(event["id"]).version == 4
    stamp = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize("bad", ["", "com.wasmcloud.lattice.", "host started", "a.b"])
def test_bad_event_names(bad: str) -> None:
    with pytest.raises(LatticeError):
        ev.cloud_event(bad, HOST, {})


def test_host_events() -> None:
    started = ev.host_started(
        labels={"os": "linux"}, friendly_name="pi", uptime_seconds=1.7, version="0.1"
    )
    assert started == {
        "labels": {"os": "linux"},
        "friendly_name": "pi",
        "uptime_seconds": 1,
        "version": "0.1",
    }
    assert ev.host_stopped(labels={"os": "linux"}) == {"labels": {"os": "linux"}}
    assert ev.host_stopped(labels={}, reason="SIGTERM")["reason"] == "SIGTERM"


def test_heartbeat_serves_both_generations() -> None:
    inventory = HostInventory(
        host_id=HOST,
        issuer="C1",
        labels={"os": "linux"},
        friendly_name="pi",
        version="0.1",
        uptime_seconds=3601,
        actors=(
            ActorInfo(
                ACTOR, "reg/echo:1", "echo", (ActorInstanceInfo("i1"), ActorInstanceInfo("i2"))
            ),
        ),
        providers=(ProviderInfo(PROVIDER, "wasmcloud:httpserver", "default"),),
    )
    data = ev.host_heartbeat(inventory)
    assert data["actors"] == {ACTOR: 2}  # OTP shape
    provider = data["providers"][0]
    assert provider["public_key"] == PROVIDER and provider["id"] == PROVIDER
    assert provider["link_name"] == "default" and provider["contract_id"] == "wasmcloud:httpserver"
    for key, value in {
        "host_id": HOST, "issuer": "C1", "labels": {"os": "linux"}, "friendly_name": "pi",
        "version": "0.1", "uptime_seconds": 3601, "uptime_human": "1h 1s",
    }.items():  # fmt: skip
        assert data[key] == value
    json.dumps(data)


def test_actor_events() -> None:
    claims = {"call_alias": "", "caps": ["wasmcloud:httpserver"], "issuer": "A1", "name": "echo"}
    started = ev.actor_started(
        public_key=ACTOR, image_ref="reg/echo:1", instance_id="i1", annotations={"k": "v"},
        claims=claims, api_version=1,
    )  # fmt: skip
    assert started == {
        "public_key": ACTOR, "image_ref": "reg/echo:1", "api_version": 1, "instance_id": "i1",
        "annotations": {"k": "v"}, "claims": claims,
    }  # fmt: skip
    assert (
        ev.actor_started(
            public_key=ACTOR, image_ref="", instance_id="i", annotations={}, claims={}, host_id=HOST
        )["host_id"]
        == HOST
    )
    assert ev.actor_stopped(public_key=ACTOR, instance_id="i1", annotations={}) == {
        "public_key": ACTOR,
        "instance_id": "i1",
        "annotations": {},
    }
    assert ev.actor_start_failed(actor_ref="r", error="no such file") == {
        "actor_ref": "r",
        "error": "no such file",
    }
    assert ev.actor_updated(public_key=ACTOR, revision=3, instance_id="i1") == {
        "public_key": ACTOR,
        "revision": 3,
        "instance_id": "i1",
    }
    failed = ev.actor_update_failed(public_key=ACTOR, revision=3, instance_id="i", reason="bad")
    assert failed["reason"] == "bad"


def test_linkdef_events() -> None:
    link = LinkDefinition(ACTOR, "wasmcloud:httpserver", PROVIDER, "default", {"PORT": "80"})
    assert ev.linkdef_set(link) == link.to_json()
    gone = ev.linkdef_deleted(LinkDelete(ACTOR, "wasmcloud:httpserver", "default"), PROVIDER)
    assert gone["id"] == link.id and gone["provider_id"] == PROVIDER and gone["values"] == {}


def test_invocation_events() -> None:
    source = WasmCloudEntity.provider(PROVIDER, "wasmcloud:httpserver", "default")
    dest = WasmCloudEntity.actor(ACTOR)
    ok = ev.invocation_succeeded(source=source, dest=dest, operation="Op", size=12)
    assert ok == {
        "source": {
            "public_key": PROVIDER,
            "contract_id": "wasmcloud:httpserver",
            "link_name": "default",
        },
        "dest": {"public_key": ACTOR, "contract_id": "", "link_name": ""},
        "operation": "Op",
        "bytes": 12,
    }
    failed = ev.invocation_failed(source=source, dest=dest, operation="Op", size=1, error="trap")
    assert failed["error"] == "trap" and failed["bytes"] == 1
