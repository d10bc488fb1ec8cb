"""Lattice subjects: every builder's exact string, and the control-subject parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import LatticeError
from agent.lattice import subjects as s
from agent.lattice.subjects import ControlKind, ControlSubject, parse_control_subject

HOST = "NBIRS5PXKZZXKBSJNAFFW4HNQ6O7OBMX3H6XGHJRLXVCHEMLSXGO5F3H"
ACTOR = "MBCFOPM6JW2APJLXJD3Z5O4CN7CPYJ2B4FTKLJUR5YR5MITIU7HD3WD5"
PROVIDER = "VAG3QITQQ2ODAOWB5TTQSDJ53XK3SHBEIFNK4AYJ5RKAX2UNSCAPHA5M"


def test_control_builders() -> None:
    assert s.ping_hosts("default") == "wasmbus.ctl.default.ping.hosts"
    assert s.get_inventory("default", HOST) == f"wasmbus.ctl.default.get.{HOST}.inv"
    assert s.get_claims("lat") == "wasmbus.ctl.lat.get.claims"
    assert s.get_links("lat") == "wasmbus.ctl.lat.get.links"
    for op in ("la", "sa", "scale", "stop", "upd"):
        assert s.command("lat", HOST, op) == f"wasmbus.ctl.lat.cmd.{HOST}.{op}"
    assert s.auction_actor("lat") == "wasmbus.ctl.lat.auction.actor"
    assert s.linkdefs_put("lat") == "wasmbus.ctl.lat.linkdefs.put"
    assert s.linkdefs_del("lat") == "wasmbus.ctl.lat.linkdefs.del"


def test_configurable_prefix() -> None:
    assert s.ping_hosts("lat", prefix="acme.ctl") == "acme.ctl.lat.ping.hosts"
    assert s.command("lat", HOST, "la", prefix="x") == f"x.lat.cmd.{HOST}.la"
    parsed = parse_control_subject("acme.ctl.lat.get.claims", "lat", prefix="acme.ctl")
    assert parsed == ControlSubject(ControlKind.GET_CLAIMS)
    # the default prefix does not match a custom one
    assert parse_control_subject("wasmbus.ctl.lat.get.claims", "lat", prefix="acme.ctl").kind is (
        ControlKind.UNKNOWN
    )


def test_event_and_rpc_builders() -> None:
    assert s.events("default") == "wasmbus.evt.default"
    assert s.event("default", "host_heartbeat") == "wasmbus.evt.default.host_heartbeat"
    assert (
        s.event("default", "com.wasmcloud.lattice.actor_started")
        == "wasmbus.evt.default.actor_started"
    )
    assert s.rpc_events("default") == "wasmbus.rpcevt.default"
    assert s.actor_rpc("default", ACTOR) == f"wasmbus.rpc.default.{ACTOR}"
    assert s.provider_rpc("default", PROVIDER, "default") == (
        f"wasmbus.rpc.default.{PROVIDER}.default"
    )


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "a b", "tab\t", "x" * 300])
def test_builders_refuse_bad_tokens(bad: str) -> None:
    with pytest.raises(LatticeError):
        s.ping_hosts(bad)
    with pytest.raises(LatticeError):
        s.command("default", bad, "la")
    with pytest.raises(LatticeError):
        s.actor_rpc("default", bad)


def test_bad_prefix_refused() -> None:
    with pytest.raises(LatticeError, match="prefix"):
        s.ping_hosts("default", prefix="wasmbus.*")
    with pytest.raises(LatticeError, match="prefix"):
        s.ping_hosts("default", prefix="wasmbus..ctl")


@pytest.mark.parametrize(
    ("tail", "kind", "host"),
    [
        ("ping.hosts", ControlKind.PING_HOSTS, None),
        (f"get.{HOST}.inv", ControlKind.GET_INVENTORY, HOST),
        ("get.claims", ControlKind.GET_CLAIMS, None),
        ("get.links", ControlKind.GET_LINKS, None),
        (f"cmd.{HOST}.la", ControlKind.LAUNCH_ACTOR, HOST),
        (f"cmd.{HOST}.sa", ControlKind.STOP_ACTOR, HOST),
        (f"cmd.{HOST}.scale", ControlKind.SCALE_ACTOR, HOST),
        (f"cmd.{HOST}.stop", ControlKind.STOP_HOST, HOST),
        (f"cmd.{HOST}.upd", ControlKind.UPDATE_ACTOR, HOST),
        ("auction.actor", ControlKind.AUCTION_ACTOR, None),
        ("linkdefs.put", ControlKind.LINKDEFS_PUT, None),
        ("linkdefs.del", ControlKind.LINKDEFS_DEL, None),
        # served by other hosts, not by us: unknown, but the host token is still reported
        (f"cmd.{HOST}.lp", ControlKind.UNKNOWN, HOST),
        (f"cmd.{HOST}.sp", ControlKind.UNKNOWN, HOST),
        ("auction.provider", ControlKind.UNKNOWN, None),
        ("registries.put", ControlKind.UNKNOWN, None),
        (f"labels.{HOST}.put", ControlKind.UNKNOWN, None),
        ("ping", ControlKind.UNKNOWN, None),
        ("get.claims.extra", ControlKind.UNKNOWN, None),
        ("get..inv", ControlKind.UNKNOWN, None),
        ("", ControlKind.UNKNOWN, None),
    ],
)
def test_parse(tail: str, kind: ControlKind, host: str | None) -> None:
    parsed = parse_control_subject(f"wasmbus.ctl.default.{tail}", "default")
    assert parsed == ControlSubject(kind, host)


def test_parse_round_trips_every_builder() -> None:
    built = {
        s.ping_hosts("l"): ControlKind.PING_HOSTS,
        s.get_inventory("l", HOST): ControlKind.GET_INVENTORY,
        s.get_claims("l"): ControlKind.GET_CLAIMS,
        s.get_links("l"): ControlKind.GET_LINKS,
        s.auction_actor("l"): ControlKind.AUCTION_ACTOR,
        s.linkdefs_put("l"): ControlKind.LINKDEFS_PUT,
        s.linkdefs_del("l"): ControlKind.LINKDEFS_DEL,
        s.command("l", HOST, "upd"): ControlKind.UPDATE_ACTOR,
    }
    for subject, kind in built.items():
        assert parse_control_subject(subject, "l").kind is kind


def test_parse_other_lattice_is_unknown() -> None:
    assert parse_control_subject("wasmbus.ctl.other.ping.hosts", "default").kind is (
        ControlKind.UNKNOWN
    )
    # a lattice whose name is a prefix of ours must not match
    assert parse_control_subject("wasmbus.ctl.defaults.ping.hosts", "default").kind is (
        ControlKind.UNKNOWN
    )
    assert parse_control_subject("wasmbus.evt.default", "default").kind is ControlKind.UNKNOWN


def test_control_subscriptions() -> None:
    subs = s.control_subscriptions("default", HOST)
    plain = {x.subject for x in subs if x.queue is None}
    queued = {x.subject: x.queue for x in subs if x.queue is not None}
    assert plain == {
        "wasmbus.ctl.default.ping.hosts",
        f"wasmbus.ctl.default.get.{HOST}.inv",
        f"wasmbus.ctl.default.cmd.{HOST}.*",
        "wasmbus.ctl.default.auction.actor",
    }
    assert queued == {
        "wasmbus.ctl.default.get.claims": "wasmbus.ctl.default",
        "wasmbus.ctl.default.get.links": "wasmbus.ctl.default",
        "wasmbus.ctl.default.linkdefs.put": "wasmbus.ctl.default",
        "wasmbus.ctl.default.linkdefs.del": "wasmbus.ctl.default",
    }


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_parser_never_raises(subject: str) -> None:
    parsed = parse_control_subject(subject, "default")
    assert isinstance(parsed, ControlSubject)
    parsed = parse_control_subject("wasmbus.ctl.default." + subject, "default")
    assert isinstance(parsed.kind, ControlKind)
