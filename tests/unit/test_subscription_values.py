"""SUBSCRIPTION link values: what may be subscribed, and the SubMessage actors receive."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.capabilities.subscriptions import (
    MAX_SUBSCRIPTIONS,
    SubscriptionSpec,
    encode_sub_message,
    parse_subscriptions,
)
from agent.errors import ControlRequestError


def test_subjects_queues_and_the_default_group() -> None:
    values = {"SUBSCRIPTION": "a.b, sensors.*.temp|workers ,mcu.>", "QUEUE": "all"}
    assert parse_subscriptions(values) == (
        SubscriptionSpec("a.b", "all"),
        SubscriptionSpec("sensors.*.temp", "workers"),
        SubscriptionSpec("mcu.>", "all"),
    )


def test_the_older_providers_key_names_and_case() -> None:
    values = {"subscription": "a.b", "QUEUEGROUP_NAME": "g"}
    assert parse_subscriptions(values) == (SubscriptionSpec("a.b", "g"),)
    assert str(SubscriptionSpec("a.b", "g")) == "a.b|g"


@pytest.mark.parametrize("values", [{}, {"SUBSCRIPTION": "  "}, {"URI": "nats://x"}])
def test_no_subscription_asked_for(values: dict[str, str]) -> None:
    assert parse_subscriptions(values) == ()


def test_duplicates_collapse() -> None:
    assert parse_subscriptions({"SUBSCRIPTION": "a,a,a|q"}) == (
        SubscriptionSpec("a"),
        SubscriptionSpec("a", "q"),
    )


@pytest.mark.parametrize(
    ("subscription", "reason"),
    [
        ("$SYS.>", "reserved"),
        ("$KV.LATTICE_EDGE_KV.>", "reserved"),
        ("wasmbus.ctl.default.>", "reserved"),
        ("wasmbus", "reserved"),
        ("_INBOX_LE.NABC.>", "reserved"),
        (">", "starts with a wildcard"),
        ("*", "starts with a wildcard"),
        ("*.ctl.>", "starts with a wildcard"),
        ("a.>.b", "may only be the last token"),
        ("a.b*", "whole tokens"),
        ("a.b>", "whole tokens"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a b", "whitespace"),
        ("a\x00b", "control characters"),
        ("a,", "empty subject"),
        ("x" * 257, "longer than 256 bytes"),
        ("a|", "queue group"),
        ("a|bad group", "queue group"),
    ],
)
def test_refused_subjects(subscription: str, reason: str) -> None:
    with pytest.raises(ControlRequestError, match="SUBSCRIPTION") as raised:
        parse_subscriptions({"SUBSCRIPTION": subscription})
    assert reason in str(raised.value)


def test_a_bad_default_group_is_named() -> None:
    with pytest.raises(ControlRequestError, match="QUEUE queue group"):
        parse_subscriptions({"SUBSCRIPTION": "a", "QUEUE": "no spaces"})


def test_too_many_subjects() -> None:
    many = ",".join(f"s.{i}" for i in range(MAX_SUBSCRIPTIONS + 1))
    with pytest.raises(ControlRequestError, match="at most"):
        parse_subscriptions({"SUBSCRIPTION": many})


def test_the_error_escapes_what_it_quotes() -> None:
    with pytest.raises(ControlRequestError) as raised:
        parse_subscriptions({"SUBSCRIPTION": "a\nFAKE LOG LINE"})
    assert "\n" not in str(raised.value)


@given(st.text(max_size=300), st.text(max_size=80))
def test_any_value_parses_or_is_refused_cleanly(subscription: str, queue: str) -> None:
    try:
        specs = parse_subscriptions({"SUBSCRIPTION": subscription, "QUEUE": queue})
    except ControlRequestError:
        return
    for spec in specs:
        assert not spec.subject.startswith(("$", "wasmbus.", "_INBOX_LE.", "*", ">"))
        assert spec.subject != "wasmbus"


def test_sub_message_is_what_the_nats_provider_sends() -> None:
    assert msgpack.unpackb(encode_sub_message("a.b", "_INBOX.x", b"\x00\x01")) == {
        "subject": "a.b",
        "replyTo": "_INBOX.x",
        "body": b"\x00\x01",
    }
    assert msgpack.unpackb(encode_sub_message("a.b", "", b"")) == {"subject": "a.b", "body": b""}
