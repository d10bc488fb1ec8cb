"""Leaf node: config rendering per server version, version parsing, binary lookup, and
the output pump's rate limiting."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import HostPort, UpstreamSettings
from agent.errors import LeafConfigError, LeafError, NatsServerNotFound
from agent.leaf.binary import find_nats_server, parse_version
from agent.leaf.render import LeafPlan, render, to_conf
from agent.leaf.supervisor import Backoff, LogPump

V2_9 = (2, 9, 10)
V2_15 = (2, 15, 1)


def plan(upstream: UpstreamSettings | None = None, sync: str | None = None) -> LeafPlan:
    return LeafPlan(
        server_name="edge-nabc",
        listen=HostPort("127.0.0.1", 4222),
        monitor=HostPort("127.0.0.1", 8222),
        max_payload=524288,
        jetstream=True,
        jetstream_domain="edge_abc",
        store_dir=Path("/var/lib/lattice-edge/jetstream"),
        jetstream_max_memory_mb=8,
        jetstream_max_file_mb=256,
        sync_interval=sync,
        upstream=upstream,
    )


def upstream(**changes: object) -> UpstreamSettings:
    fields: dict[str, object] = {
        "urls": ("tls://connect.ngs.global", "nats-leaf://10.0.0.1:7422"),
        "credentials": Path("/var/lib/lattice-edge/keys/upstream.creds"),
        "tls_ca_file": None, "tls_cert_file": None, "tls_key_file": None,
        "tls_handshake_first": False,
    }  # fmt: skip
    fields.update(changes)
    return UpstreamSettings(**fields)  # type: ignore[arg-type]


def test_standalone_leaf_has_no_remotes() -> None:
    text = render(plan(), V2_15).text
    assert 'listen: "127.0.0.1:4222"' in text
    assert 'http: "127.0.0.1:8222"' in text
    assert "leafnodes" not in text
    assert 'domain: "edge_abc"' in text
    assert "max_memory_store: 8388608" in text
    assert "max_payload: 524288" in text


def test_modern_server_gets_compression_and_first_info_timeout() -> None:
    text = render(plan(upstream(), sync="1m"), V2_15).text
    assert 'urls: ["tls://connect.ngs.global", "nats-leaf://10.0.0.1:7422"]' in text
    assert 'credentials: "/var/lib/lattice-edge/keys/upstream.creds"' in text
    assert 'compression: "s2_auto"' in text
    assert 'first_info_timeout: "5s"' in text
    assert 'sync_interval: "1m"' in text


def test_2_9_server_never_sees_keys_it_refuses() -> None:
    rendered = render(plan(upstream(), sync="1m"), V2_9)
    for refused in ("compression", "first_info_timeout", "sync_interval", "handshake_first"):
        assert refused not in rendered.text
    assert any("sync_interval" in warning for warning in rendered.warnings)
    assert "credentials" in rendered.text


def test_tls_options() -> None:
    tls = upstream(
        tls_ca_file=Path("/etc/ca.pem"),
        tls_cert_file=Path("/etc/c.pem"),
        tls_key_file=Path("/etc/k.pem"),
        tls_handshake_first=True,
    )
    text = render(plan(tls), V2_15).text
    assert 'ca_file: "/etc/ca.pem"' in text and "handshake_first: true" in text
    with pytest.raises(LeafConfigError, match=r"2\.10 or newer"):
        render(plan(tls), V2_9)


def test_to_conf_quotes_strings_and_nests() -> None:
    text = to_conf({"a": 'q"uote', "b": {"c": [1, True]}, "d": [{"e": "f"}]})
    assert 'a: "q\\"uote"' in text
    assert "b: {\n  c: [1, true]\n}" in text
    assert 'd: [{\n  e: "f"\n}]' in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("nats-server: v2.15.1\n", (2, 15, 1)), ("nats-server: v2.9.10", (2, 9, 10)),
     ("v2.10.0-beta.3", (2, 10, 0))],
)  # fmt: skip
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(LeafError, match="cannot read a version"):
        parse_version("segmentation fault")


def test_find_nats_server_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(NatsServerNotFound, match=str(tmp_path / "nope")):
        find_nats_server(tmp_path / "nope")


def test_find_nats_server_reads_the_version(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    fake.chmod(0o755)
    assert find_nats_server(fake).version == (2, 9, 10)


def test_log_pump_levels_and_rate_limit() -> None:
    clock = [0.0]
    pump = LogPump(window=60, clock=lambda: clock[0])
    line = (
        b"[77] 2026/11/27 10:00:00.1 [ERR] Error trying to connect as leafnode to remote "
        b"server 127.0.0.1:7422 (attempt %d): dial tcp: connection refused\n"
    )
    first = pump.feed(line % 1)
    assert first is not None and first[0] == logging.ERROR
    for attempt in range(2, 40):
        clock[0] += 1
        assert pump.feed(line % attempt) is None
    clock[0] += 60
    again = pump.feed(line % 99)
    assert again is not None and "38 similar lines suppressed" in again[1]
    assert pump.feed(b"[1] 2026/11/27 10:00:00 [INF] Server is ready\n") == (
        logging.DEBUG,
        "Server is ready",
    )
    fatal = pump.feed(b"[1] 2026/11/27 [FTL] Error listening on port: 127.0.0.1:4222\n")
    assert fatal is not None and fatal[0] == logging.ERROR
    assert pump.last_error() == "[FTL] Error listening on port: 127.0.0.1:4222"
    assert pump.feed(b"\n") is None


def test_log_pump_caps_lines_that_all_differ() -> None:
    # A local client trying 5,000 different forbidden subjects makes nats-server log 5,000
    # different permission violations; the pump lets a burst through, then counts.
    now = [0.0]
    pump = LogPump(window=60.0, clock=lambda: now[0], burst=10)

    def word(n: int) -> str:  # letters only: numbers would make the lines "the same"
        return "".join(chr(97 + int(d)) for d in f"{n:04}") + chr(97 + n % 26) * 2

    passed = [
        pump.feed(f'[ERR] Publish Violation - Subject "wasmbus.{word(i)}"'.encode())
        for i in range(5000)
    ]
    assert sum(p is not None for p in passed) == 10
    now[0] = 61.0
    line = pump.feed(b"[ERR] something else entirely")
    assert line is not None and "4990 other lines suppressed" in line[1]


def test_backoff_jitter_stays_within_bounds() -> None:
    backoff = Backoff()
    assert backoff.stable_after == 3.0
    delays = [backoff.jittered(0.5) for _ in range(1000)]
    assert min(delays) >= 0.4 and max(delays) <= 0.6 and len(set(delays)) > 100
    assert backoff.next(16.0) == 30.0
