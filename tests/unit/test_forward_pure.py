"""Store-and-forward's pure parts: subjects, the wire codec, the outbox's limits, the
ledger of drops, the uplink watch, and the ``[forward]`` config."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.capabilities.kvstore import KeyValueSettings
from agent.config import HostPort, UpstreamSettings, load_config
from agent.errors import ConfigError
from agent.forward.codec import (
    ORIGIN_MSG_ID,
    PubAckKind,
    parse_delivery,
    parse_puback,
    upstream_headers,
)
from agent.forward.ledger import Ledger
from agent.forward.link import UplinkWatch
from agent.forward.outbox import Outbox, parse_time
from agent.forward.plan import (
    LARGE_BLOCK,
    SMALL_STREAM_MAX,
    outbox_capacity,
    outbox_plan,
)
from agent.forward.subjects import (
    check_forward_subject,
    check_subject,
    check_upstream_prefix,
    message_id,
    subjects_overlap,
    upstream_subject,
)
from agent.forward.uplink import UplinkStreamSpec, nats_cli_command
from agent.leaf.render import LeafPlan, render
from profiles import available_profiles, load_profile

HOST = "N" + "A" * 55

# --- subjects --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject", ["a", "a.b.c", "a.*.c", "a.>", "sensors.temp-1", "x_y.Z9"]
)  # fmt: skip
def test_valid_subjects(subject: str) -> None:
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "why"),
    [("", "empty"), ("a..b", "empty token"), ("a.>.b", "last token"), ("a b", "whitespace"),
     ("a.b*", "whole tokens"), ("a.\x00", "control"), ("x" * 300, "at most")],
)  # fmt: skip
def test_invalid_subjects_say_why(subject: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_subject(subject)


def test_wildcards_can_be_refused() -> None:
    with pytest.raises(ValueError, match="wildcards"):
        check_subject("a.*", wildcards=False)


def _matches(pattern: list[str], subject: tuple[str, ...]) -> bool:
    for index, token in enumerate(pattern):
        if token == ">":
            return len(subject) > index
        if index >= len(subject) or (token != "*" and token != subject[index]):
            return False
    return len(pattern) == len(subject)


_TOKEN = st.sampled_from(["a", "b", "*", ">"])


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(_TOKEN, min_size=1, max_size=4))
    if ">" in tokens:
        tokens = tokens[: tokens.index(">") + 1]
    return ".".join(tokens)


@given(_patterns(), _patterns())
def test_overlap_agrees_with_brute_force(first: str, second: str) -> None:
    concrete = [s for n in range(1, 6) for s in itertools.product("abc", repeat=n)]
    a, b = first.split("."), second.split(".")
    expected = any(_matches(a, s) and _matches(b, s) for s in concrete)
    assert subjects_overlap(first, second) is expected


@pytest.mark.parametrize(
    ("subject", "why"),
    [(">", "first token"), ("*.temp", "first token"), ("$JS.API.x", "reserved"),
     ("_INBOX.abc", "reserved"), ("wasmbus.rpc.default.MX", "wasmbus.rpc"),
     ("wasmbus.*.default.x", "wasmbus"), ("lattice-edge.telemetry.x", "lattice-edge"),
     ("lattice-edge.>", "lattice-edge")],
)  # fmt: skip
def test_forward_subjects_refused_where_capture_would_break_things(subject: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_forward_subject(subject)


def test_forward_subjects_may_not_capture_the_upstream_prefix() -> None:
    with pytest.raises(ValueError, match="upstream prefix"):
        check_forward_subject("cloud.up.x", "cloud.up")
    assert check_forward_subject("sensors.>", "cloud.up") == "sensors.>"
    assert check_forward_subject("wasmbus.evt.default") == "wasmbus.evt.default"


@pytest.mark.parametrize(
    "prefix", ["a.*", "$JS.up", "_INBOX.x", "wasmbus.ctl", "lattice-edge.telemetry"]
)  # fmt: skip
def test_bad_upstream_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        check_upstream_prefix(prefix)


def test_upstream_names() -> None:
    assert upstream_subject("lattice-edge.uplink", HOST, "sensors.t") == (
        f"lattice-edge.uplink.{HOST}.sensors.t"
    )
    assert message_id(HOST, 42) == f"{HOST}:42"


# --- codec -----------------------------------------------------------------------------


def test_upstream_headers_move_the_producer_id_and_drop_publish_directives() -> None:
    original = {
        "Nats-Msg-Id": "p-7",
        "Nats-Expected-Stream": "LATTICE_EDGE_OUTBOX",
        "nats-expected-last-sequence": "3",
        "Content-Type": "application/json",
        "X-Trace": "abc",
    }
    out = upstream_headers(original, "N1:9")
    assert out == {
        "Content-Type": "application/json",
        "X-Trace": "abc",
        ORIGIN_MSG_ID: "p-7",
        "Nats-Msg-Id": "N1:9",
    }
    assert upstream_headers(None, "N1:1") == {"Nats-Msg-Id": "N1:1"}


def test_parse_delivery_v1_and_v2() -> None:
    v1 = parse_delivery("$JS.ACK.OUT.fwd.1.42.7.1700000000000000000.3")
    assert (v1.stream, v1.stream_seq, v1.deliveries, v1.pending) == ("OUT", 42, 1, 3)
    v2 = parse_delivery("$JS.ACK.edge_x.HASH.OUT.fwd.2.43.8.1700000000000000001.0.tok")
    assert (v2.stream, v2.stream_seq, v2.deliveries, v2.timestamp_ns) == (
        "OUT", 43, 2, 1700000000000000001
    )  # fmt: skip
    assert parse_delivery("$JS.ACK.edge_x.HASH.OUT.fwd.2.44.8.1.0").stream_seq == 44


@pytest.mark.parametrize(
    "reply", ["", "_INBOX.x", "$JS.ACK.a.b", "$JS.ACK.OUT.fwd.1.x.7.1.3", "$JS.NAK.a.b.c.d.e.f.g"]
)  # fmt: skip
def test_parse_delivery_refuses_other_subjects(reply: str) -> None:
    with pytest.raises(ValueError):
        parse_delivery(reply)


def test_parse_puback() -> None:
    stored = parse_puback(b'{"stream":"UP","seq":5}')
    assert stored.kind is PubAckKind.STORED and stored.ok and stored.seq == 5
    duplicate = parse_puback(b'{"stream":"UP","seq":5,"duplicate":true}')
    assert duplicate.kind is PubAckKind.DUPLICATE and duplicate.ok
    too_big = parse_puback(b'{"error":{"code":400,"err_code":10054,"description":"too big"}}')
    assert too_big.kind is PubAckKind.REFUSED and too_big.permanent and not too_big.ok
    full = parse_puback(b'{"error":{"code":503,"description":"resources exceeded"}}')
    assert full.kind is PubAckKind.REFUSED and not full.permanent
    assert not parse_puback(b'{"error":{"code":429}}').permanent
    assert parse_puback(b"", "503").kind is PubAckKind.NO_RESPONDERS
    for junk in (b"nope", b"[1]", b'{"stream":1}', b"{" + b" " * 5000 + b"}"):
        assert parse_puback(junk).kind is PubAckKind.MALFORMED


def test_parse_time() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time(None) is None
    assert parse_time("2026-01-02T03:04:05.123456789Z") == pytest.approx(1767323045.123456)
    assert parse_time("2026-01-02T03:04:05Z") == pytest.approx(1767323045.0)
    assert parse_time("garbage") is None


def test_pull_request_body() -> None:
    body = json.loads(Outbox.pull_request(10, 4096, 1.5))
    assert body == {"batch": 10, "max_bytes": 4096, "expires": 1_500_000_000}


# --- plan -------------------------------------------------------------------------------


def test_capacity_leaves_a_block_and_metadata_inside_the_budget() -> None:
    budget = 64 * 2**20
    capacity = outbox_capacity(budget)
    assert capacity > SMALL_STREAM_MAX
    assert capacity + LARGE_BLOCK < budget


def test_small_budgets_get_small_blocks() -> None:
    assert outbox_capacity(2**20) == SMALL_STREAM_MAX  # 1 MiB budget: 32 kB blocks
    assert outbox_capacity(100_000) == 100_000 - 32_000 - 16 * 1024
    with pytest.raises(ValueError, match="holds nothing"):
        outbox_capacity(40_000)


def test_outbox_plan() -> None:
    plan = outbox_plan(HOST, ["sensors.>"], budget_mb=64, max_age_h=0.001, max_payload=524288)
    assert plan.subjects == (f"lattice-edge.telemetry.{HOST}.>", "sensors.>")
    assert plan.budget_bytes == 64 * 2**20
    assert plan.max_age_s == pytest.approx(3.6)
    assert plan.duplicate_window_s == pytest.approx(3.6)  # never longer than max_age
    assert plan.max_msg_size == 524288 - 1024
    week = outbox_plan(HOST, [], budget_mb=64, max_age_h=168, max_payload=1 << 20)
    assert week.duplicate_window_s == 120.0


# --- ledger -----------------------------------------------------------------------------


def test_ledger_counts_forwarded_in_order_without_drops() -> None:
    ledger = Ledger()
    for seq in range(1, 6):
        assert ledger.settle_forwarded(seq) == 0
    assert ledger.settle_stream(6, None) == 0
    assert (ledger.forwarded, ledger.dropped, ledger.accounted) == (5, 0, 5)


def test_ledger_counts_a_gap_once() -> None:
    ledger = Ledger(accounted=10)
    assert ledger.settle_stream(51, None) == 40  # 11..50 discarded while offline
    assert ledger.settle_stream(51, None) == 0
    assert ledger.settle_forwarded(51) == 0
    assert ledger.settle_forwarded(60) == 8  # 52..59 never reached us
    assert (ledger.dropped, ledger.accounted, ledger.forwarded) == (48, 60, 2)


def test_ledger_does_not_count_what_is_held_in_flight() -> None:
    ledger = Ledger(accounted=100)
    # the budget discarded 101..150 while the forwarder held 120..150 in flight
    assert ledger.settle_stream(151, 120) == 19
    for seq in range(120, 151):
        assert ledger.settle_forwarded(seq) == 0
    assert ledger.dropped == 19


def test_ledger_ignores_a_redelivery_and_counts_refusals() -> None:
    ledger = Ledger(accounted=7, forwarded=7)
    assert ledger.settle_forwarded(7) == 0  # its local ack was lost; sent again
    assert ledger.forwarded == 7
    assert ledger.settle_refused(9) == 1
    assert (ledger.refused, ledger.dropped, ledger.accounted) == (1, 1, 9)


def test_ledger_round_trip_and_damage() -> None:
    ledger = Ledger(accounted=3, forwarded=2, dropped=1, refused=0)
    assert Ledger.from_json(json.loads(json.dumps(ledger.to_json()))) == ledger
    assert Ledger.from_json("nonsense") == Ledger()
    assert Ledger.from_json({"accounted": -4, "dropped": "x", "forwarded": 2}) == Ledger(
        forwarded=2
    )


# --- the uplink watch -------------------------------------------------------------------

UP_215 = "[4616] 2026/12/01 22:45:41.860693 [INF] 127.0.0.1:41785 - lid:13 - Leafnode connection created for account: $G "  # noqa: E501
UP_29 = "[5878] 2026/12/01 22:46:18.554845 [INF] 127.0.0.1:35123 - lid:4 - Leafnode connection created for account: $G"  # noqa: E501
DOWN = "[4616] 2026/12/01 22:45:40.859635 [INF] 127.0.0.1:41785 - lid:5 - Leafnode connection closed: Client Closed - Remote: hub"  # noqa: E501


async def test_uplink_watch_follows_the_leafs_log() -> None:
    watch = UplinkWatch()
    seen: list[bool] = []
    watch.listeners.append(seen.append)
    assert watch.connected is None
    up = watch.next_up()
    down = watch.next_down()
    watch.feed("[INF] Starting nats-server")
    assert not up.is_set()
    watch.feed(DOWN)
    assert down.is_set() and watch.connected is False
    watch.feed(UP_29)
    assert up.is_set() and watch.connected is True
    assert watch.next_up() is not up  # a fresh event for the next wait
    later = watch.next_up()
    watch.feed(UP_215)
    await asyncio.wait_for(later.wait(), 1)
    assert seen == [False, True, True]
    assert (watch.ups, watch.downs) == (2, 1)


def test_uplink_watch_ignores_words_a_client_put_in_the_log() -> None:
    watch = UplinkWatch()
    forged = (
        '[4616] 2026/12/01 22:45:41.860693 [ERR] 127.0.0.1:5555 - cid:9 - "v2.16:python:'
        'Leafnode connection closed" - Publish Violation - User "local", Subject "$JS.x"'
    )
    watch.feed(forged)
    watch.feed("[INF] Leafnode connection created for account: $G")  # no lid: not the leaf
    assert watch.connected is None and watch.downs == 0


# --- config and leaf rendering ----------------------------------------------------------


UPSTREAM = "[upstream]\nurls = ['tls://connect.ngs.global']\n"


def test_forwarding_is_on_with_an_upstream_and_off_without(tmp_path: Path) -> None:
    standalone = load_config(_write(tmp_path, ""), env={})
    assert standalone.forward.enabled is False
    bridged = load_config(_write(tmp_path, UPSTREAM), env={})
    assert bridged.forward.enabled is True
    assert bridged.forward.window == 256
    assert bridged.forward.upstream_prefix == "lattice-edge.uplink"
    off = load_config(_write(tmp_path, UPSTREAM + "[forward]\nenabled = false\n"), env={})
    assert off.forward.enabled is False
    no_js = load_config(_write(tmp_path, UPSTREAM + "[leaf]\njetstream = false\n"), env={})
    assert no_js.forward.enabled is False


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("table", "key", "why"),
    [("enabled = true\n[leaf]\njetstream = false", "forward.enabled", "JetStream"),
     ("window = 0", "forward.window", "1 to 4096"),
     ("window = true", "forward.window", "1 to 4096"),
     ("subjects = ['$KV.x']", "forward.subjects", "reserved"),
     ("subjects = ['up.x']\nupstream_prefix = 'up'", "forward.subjects", "upstream prefix"),
     ("upstream_prefix = 'a.*'", "forward.upstream_prefix", "wildcards"),
     ("colour = 'red'", "forward.colour", "unknown key")],
)  # fmt: skip
def test_forward_config_errors_name_the_key(tmp_path: Path, table: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        load_config(_write(tmp_path, UPSTREAM + "[forward]\n" + table + "\n"), env={})
    assert caught.value.key == key


def test_forward_config_from_the_environment(tmp_path: Path) -> None:
    env = {
        "LATTICE_EDGE_FORWARD_SUBJECTS": "sensors.>,alarms.*",
        "LATTICE_EDGE_FORWARD_WINDOW": "64",
    }
    config = load_config(_write(tmp_path, UPSTREAM), env=env)
    assert config.forward.subjects == ("sensors.>", "alarms.*")
    assert config.forward.window == 64
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, UPSTREAM), env={"LATTICE_EDGE_FORWARD_ENABLED": "maybe"})
    assert caught.value.source == "LATTICE_EDGE_FORWARD_ENABLED"


def test_forwarded_subjects_are_not_imported_from_the_hub() -> None:
    upstream = UpstreamSettings(("tls://connect.ngs.global",), None, None, None, None, False)
    plan = LeafPlan(
        server_name="edge", listen=HostPort("127.0.0.1", 4222),
        monitor=HostPort("127.0.0.1", 8222), max_payload=1 << 20, jetstream=True,
        jetstream_domain="edge_x", store_dir=Path("/tmp/js"), jetstream_max_memory_mb=8,
        jetstream_max_file_mb=64, upstream=upstream, deny_imports=("sensors.>",),
    )  # fmt: skip
    assert 'deny_imports: ["sensors.>"]' in render(plan, (2, 9, 10)).text
    plain = dataclasses.replace(plan, deny_imports=())
    assert "deny_imports" not in render(plain, (2, 15, 1)).text


# --- the cloud side ---------------------------------------------------------------------


def test_uplink_stream_spec_and_its_cli_line() -> None:
    spec = UplinkStreamSpec()
    config = spec.config()
    assert config["subjects"] == ["lattice-edge.uplink.>"]
    assert config["duplicate_window"] == 3600 * 10**9
    line = nats_cli_command(spec)
    assert line.startswith("nats stream add LATTICE_EDGE_UPLINK --subjects 'lattice-edge.uplink.>'")
    assert "--dupe-window 1h" in line and "--defaults" in line
    custom = nats_cli_command(UplinkStreamSpec(duplicate_window_s=90, max_age_s=7 * 86400))
    assert "--dupe-window 90s" in custom and "--max-age 168h" in custom


def test_the_leaf_retries_its_uplink_quickly_where_the_server_allows() -> None:
    upstream = UpstreamSettings(("tls://connect.ngs.global",), None, None, None, None, False)
    plan = LeafPlan(
        server_name="edge", listen=HostPort("127.0.0.1", 4222),
        monitor=HostPort("127.0.0.1", 8222), max_payload=1 << 20, jetstream=True,
        jetstream_domain="edge_x", store_dir=Path("/tmp/js"), jetstream_max_memory_mb=8,
        jetstream_max_file_mb=64, upstream=upstream,
    )  # fmt: skip
    assert 'reconnect: "250ms"' in render(plan, (2, 15, 1)).text
    assert "reconnect" not in render(plan, (2, 10, 9)).text  # whole seconds only before 2.11
    assert "reconnect" not in render(plan, (2, 9, 10)).text


def test_an_existing_uplink_stream_keeps_its_subjects_and_unset_limits() -> None:
    current = {"subjects": ["other.>"], "max_bytes": 10**9, "max_age": 5, "num_replicas": 3}
    changes = UplinkStreamSpec(duplicate_window_s=600).changes(current)
    assert changes == {
        "subjects": ["other.>", "lattice-edge.uplink.>"],
        "duplicate_window": 600 * 10**9,
    }
    again = UplinkStreamSpec(max_bytes=5, max_age_s=60, replicas=1).changes(
        {"subjects": ["lattice-edge.uplink.>"]}
    )
    assert again["subjects"] == ["lattice-edge.uplink.>"]
    assert (again["max_bytes"], again["max_age"], again["num_replicas"]) == (5, 60 * 10**9, 1)


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_has_room_for_the_outbox_beside_the_other_buckets(name: str) -> None:
    budgets = load_profile(name).budgets
    file_store = budgets.jetstream_max_file_mb * 2**20
    modules = budgets.jetstream_max_file_mb // 4 * 2**20  # the host's module bucket
    keyvalue = KeyValueSettings().max_bytes
    outbox = outbox_capacity(budgets.store_forward_mb * 2**20)
    assert outbox + modules + keyvalue <= file_store, name
    assert budgets.store_forward_max_age_h >= 24
