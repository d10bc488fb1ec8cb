"""Built-in capabilities against a real JetStream nats-server, with the msgpack payloads a
wasmbus-rpc actor sends (named maps, byte fields as bin)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lattice_testing import NatsServerProcess
from nats.aio.client import Client

from agent.capabilities import (
    KEYVALUE,
    MESSAGING,
    Capabilities,
    KeyValueCapability,
    KeyValueSettings,
    MessagingCapability,
    MessagingLimits,
)
from agent.capabilities.kvstore import storage_key
from agent.errors import (
    CapabilityDenied,
    CapabilityError,
    CapabilityTimeout,
    CapabilityUnavailable,
    HostCallError,
    PayloadError,
    UnknownCapability,
    UnknownOperation,
)

pytestmark = pytest.mark.integration

ACTOR = "MB2ZQB6ROOMAYBO4ZCTFYWN7YIVBWA3MTKZYAQKJMTIHE2ELLRW2E3ZW"


def pack(value: Any) -> bytes:
    """What rmp_serde::to_vec_named produces for the same value."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


@pytest.fixture
async def nc(jetstream_server: NatsServerProcess) -> AsyncIterator[Client]:
    client = await nats.connect(jetstream_server.url, allow_reconnect=False)
    yield client
    await client.close()


@pytest.fixture
def bucket_name() -> str:
    return f"T_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kv(nc: Client, bucket_name: str) -> KeyValueCapability:
    return KeyValueCapability(nc, KeyValueSettings(bucket=bucket_name, storage="memory"))


@pytest.fixture
def messaging(nc: Client) -> MessagingCapability:
    return MessagingCapability(nc, MessagingLimits(default_timeout=0.5, max_timeout=1.0))


async def op(cap: KeyValueCapability | MessagingCapability, name: str, value: Any) -> Any:
    """Call an operation with a msgpack argument and decode the response."""
    response = await cap.handle(ACTOR, name, pack(value))
    return unpack(response) if response else None


# --- messaging ---------------------------------------------------------------------


async def test_publish_reaches_a_real_subscriber(
    nc: Client, messaging: MessagingCapability
) -> None:
    subject = f"edge.test.{uuid.uuid4().hex}"
    sub = await nc.subscribe(subject)
    body = b"\x00\xff binary \xc1"
    response = await messaging.handle(
        ACTOR,
        "Messaging.Publish",
        pack({"subject": subject, "replyTo": "reply.here", "body": body}),
    )
    assert response == b""
    msg = await sub.next_msg(timeout=2)
    assert (msg.subject, msg.reply, msg.data) == (subject, "reply.here", body)
    # The bare method name, the 0xc1 format prefix, no replyTo and no body all work.
    await messaging.handle(ACTOR, "Publish", b"\xc1" + pack({"subject": subject}))
    msg = await sub.next_msg(timeout=2)
    assert (msg.reply, msg.data) == ("", b"")


async def test_request_gets_a_real_reply(nc: Client, messaging: MessagingCapability) -> None:
    subject = f"edge.svc.{uuid.uuid4().hex}"

    async def responder(msg: Any) -> None:
        await msg.respond(b"pong:" + msg.data)

    await nc.subscribe(subject, cb=responder)
    reply = await op(
        messaging, "Messaging.Request", {"subject": subject, "body": b"\x01ping", "timeoutMs": 2000}
    )
    assert reply["body"] == b"pong:\x01ping"
    assert isinstance(reply["body"], bytes)  # bin on the wire, as ReplyMessage.body is
    assert reply["subject"].startswith("_INBOX.")
    assert "replyTo" not in reply


async def test_request_timeout_is_a_clear_error(nc: Client, messaging: MessagingCapability) -> None:
    subject = f"edge.slow.{uuid.uuid4().hex}"
    await nc.subscribe(subject)  # a responder that never answers
    with pytest.raises(
        CapabilityTimeout, match=r"request to 'edge\.slow\..*' timed out after 50 ms"
    ):
        await op(messaging, "Messaging.Request", {"subject": subject, "body": b"", "timeoutMs": 50})


async def test_request_timeout_is_clamped(nc: Client) -> None:
    capability = MessagingCapability(nc, MessagingLimits(default_timeout=0.1, max_timeout=0.2))
    subject = f"edge.slow.{uuid.uuid4().hex}"
    await nc.subscribe(subject)
    started = time.monotonic()
    with pytest.raises(CapabilityTimeout, match="after 200 ms"):
        await op(capability, "Request", {"subject": subject, "body": b"", "timeoutMs": 2**32 - 1})
    assert time.monotonic() - started < 1.5
    with pytest.raises(CapabilityTimeout, match="after 100 ms"):  # 0 means the default
        await op(capability, "Request", {"subject": subject, "body": b"", "timeoutMs": 0})


async def test_request_without_responders(messaging: MessagingCapability) -> None:
    with pytest.raises(CapabilityUnavailable, match=r"no responders on subject 'nobody\.home'"):
        await op(messaging, "Request", {"subject": "nobody.home", "body": b"", "timeoutMs": 500})


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"subject": "a.*", "body": b""}, r"subject 'a\.\*' contains '\*'"),
        ({"subject": "a.>", "body": b""}, "contains '>'"),
        ({"subject": "a b", "body": b""}, "contains ' '"),
        ({"subject": "a..b", "body": b""}, "empty token"),
        ({"subject": ".a", "body": b""}, "empty token"),
        ({"subject": "", "body": b""}, "subject is empty"),
        ({"subject": "x" * 300, "body": b""}, "300 bytes long, the limit is 256"),
        ({"subject": "$JS.API.STREAM.DELETE.KV_X", "body": b""}, r"reserved \(prefix '\$'\)"),
        ({"subject": "wasmbus.ctl.default.cmd.x", "body": b""}, "reserved"),
        ({"subject": "ok", "replyTo": "bad.*", "body": b""}, r"replyTo 'bad\.\*'"),
        ({"body": b""}, "missing field 'subject'"),
        ({"subject": 5, "body": b""}, "field 'subject' must be a string, got an integer"),
        ({"subject": "ok", "body": 7}, "field 'body' must be bytes"),
        (["ok", None, b""], "expected a msgpack map with named fields, got an array"),
    ],
)
async def test_publish_refuses_bad_messages(
    messaging: MessagingCapability, message: Any, error: str
) -> None:
    with pytest.raises(PayloadError, match=error) as caught:
        await op(messaging, "Messaging.Publish", message)
    assert str(caught.value).startswith("wasmcloud:messaging Messaging.Publish: ")


async def test_request_refuses_bad_timeouts(messaging: MessagingCapability) -> None:
    for timeout, error in [(-1, "outside"), (True, "must be an integer"), (None, "missing")]:
        with pytest.raises(PayloadError, match=error):
            await op(messaging, "Request", {"subject": "a", "body": b"", "timeoutMs": timeout})


async def test_messaging_unknown_operation(messaging: MessagingCapability) -> None:
    with pytest.raises(UnknownOperation, match=r"has no operation 'Messaging\.Subscribe'"):
        await op(messaging, "Messaging.Subscribe", {"subject": "a"})


# --- keyvalue: strings ---------------------------------------------------------------


async def test_get_set_del_contains(kv: KeyValueCapability) -> None:
    assert await op(kv, "KeyValue.Get", "greeting") == {"value": "", "exists": False}
    assert await op(kv, "KeyValue.Contains", "greeting") is False
    assert await op(kv, "KeyValue.Set", {"key": "greeting", "value": "hello", "expires": 0}) is None
    assert await op(kv, "KeyValue.Get", "greeting") == {"value": "hello", "exists": True}
    assert await op(kv, "Get", {"key": "greeting"}) == {"value": "hello", "exists": True}
    response = await kv.handle(ACTOR, "KeyValue.Get", b"\xc1" + pack("greeting"))
    assert unpack(response) == {"value": "hello", "exists": True}
    assert await op(kv, "KeyValue.Contains", "greeting") is True
    assert await op(kv, "KeyValue.Set", {"key": "greeting", "value": ""}) is None  # no expires
    assert await op(kv, "KeyValue.Get", "greeting") == {"value": "", "exists": True}
    assert await op(kv, "KeyValue.Del", "greeting") is True
    assert await op(kv, "KeyValue.Del", "greeting") is False
    assert await op(kv, "KeyValue.Contains", "greeting") is False
    # Deleted keys can be set again (the CAS names the delete marker's revision).
    assert await op(kv, "KeyValue.Increment", {"key": "greeting", "value": 3}) == 3


async def test_set_with_expiry(kv: KeyValueCapability) -> None:
    await op(kv, "KeyValue.Set", {"key": "session", "value": "abc", "expires": 1})
    assert await op(kv, "KeyValue.Get", "session") == {"value": "abc", "exists": True}
    await asyncio.sleep(1.05)
    assert await op(kv, "KeyValue.Get", "session") == {"value": "", "exists": False}
    assert await op(kv, "KeyValue.Contains", "session") is False
    assert await op(kv, "KeyValue.Del", "session") is False


async def test_increment(kv: KeyValueCapability) -> None:
    assert await op(kv, "KeyValue.Increment", {"key": "n", "value": 5}) == 5
    assert await op(kv, "KeyValue.Increment", {"key": "n", "value": -7}) == -2
    assert await op(kv, "KeyValue.Get", "n") == {"value": "-2", "exists": True}
    await op(kv, "KeyValue.Set", {"key": "word", "value": "ten", "expires": 0})
    with pytest.raises(CapabilityError, match="the value of key 'word' is not an integer"):
        await op(kv, "KeyValue.Increment", {"key": "word", "value": 1})
    await op(kv, "KeyValue.Set", {"key": "big", "value": str(2**31 - 1), "expires": 0})
    with pytest.raises(CapabilityError, match="would overflow an i32"):
        await op(kv, "KeyValue.Increment", {"key": "big", "value": 1})
    with pytest.raises(PayloadError, match="field 'value' is 2147483648, outside"):
        await op(kv, "KeyValue.Increment", {"key": "n", "value": 2**31})


async def test_concurrent_increments_are_exact(
    jetstream_server: NatsServerProcess, kv: KeyValueCapability, bucket_name: str
) -> None:
    # A second connection is a second writer: its updates really conflict with ours
    # and go through the revision compare-and-set, not just the in-process lock.
    other_nc = await nats.connect(jetstream_server.url)
    try:
        other = KeyValueCapability(other_nc, kv.settings)
        calls = [
            op(cap, "KeyValue.Increment", {"key": "hits", "value": 1})
            for _ in range(40)
            for cap in (kv, other)
        ]
        results = await asyncio.gather(*calls)
    finally:
        await other_nc.close()
    assert sorted(results) == list(range(1, 81))
    assert await op(kv, "KeyValue.Get", "hits") == {"value": "80", "exists": True}


# --- keyvalue: lists and sets ----------------------------------------------------------


async def test_list_operations(kv: KeyValueCapability) -> None:
    for length, value in enumerate(["a", "b", "c", "b", "d"], start=1):
        assert await op(kv, "KeyValue.ListAdd", {"listName": "l", "value": value}) == length
    cases = {(0, -1): ["a", "b", "c", "b", "d"], (1, 2): ["b", "c"], (-2, -1): ["b", "d"],
             (3, 100): ["b", "d"], (5, 10): [], (2, 1): [], (-100, 0): ["a"]}  # fmt: skip
    for (start, stop), expected in cases.items():
        args = {"listName": "l", "start": start, "stop": stop}
        assert await op(kv, "KeyValue.ListRange", args) == expected, (start, stop)
    assert await op(kv, "KeyValue.ListDel", {"listName": "l", "value": "b"}) is True
    assert await op(kv, "KeyValue.ListDel", {"listName": "l", "value": "zz"}) is False
    everything = {"listName": "l", "start": 0, "stop": -1}
    assert await op(kv, "KeyValue.ListRange", everything) == ["a", "c", "b", "d"]
    assert await op(kv, "KeyValue.Contains", "l") is True
    with pytest.raises(CapabilityError, match="key 'l' holds a list, not a string"):
        await op(kv, "KeyValue.Get", "l")
    assert await op(kv, "KeyValue.ListClear", "l") is True
    assert await op(kv, "KeyValue.ListClear", {"listName": "l"}) is False
    assert await op(kv, "KeyValue.ListRange", everything) == []
    # A list emptied by ListDel is gone, like in Redis.
    await op(kv, "KeyValue.ListAdd", {"listName": "one", "value": "x"})
    assert await op(kv, "KeyValue.ListDel", {"listName": "one", "value": "x"}) is True
    assert await op(kv, "KeyValue.Contains", "one") is False


async def test_set_operations(kv: KeyValueCapability) -> None:
    for name, members in {"s1": ["a", "b", "c"], "s2": ["b", "c", "d"], "s3": ["c"]}.items():
        for member in members:
            assert await op(kv, "KeyValue.SetAdd", {"setName": name, "value": member}) == 1
    assert await op(kv, "KeyValue.SetAdd", {"setName": "s1", "value": "a"}) == 0
    assert await op(kv, "KeyValue.SetQuery", "s1") == ["a", "b", "c"]
    assert await op(kv, "KeyValue.SetQuery", "nothing") == []
    assert await op(kv, "KeyValue.SetUnion", ["s1", "s2", "missing"]) == ["a", "b", "c", "d"]
    assert await op(kv, "KeyValue.SetIntersection", ["s1", "s2"]) == ["b", "c"]
    assert await op(kv, "KeyValue.SetIntersection", ["s1", "s2", "s3"]) == ["c"]
    assert await op(kv, "KeyValue.SetIntersection", ["s1", "missing"]) == []
    assert await op(kv, "KeyValue.SetUnion", {"keys": ["s3"]}) == ["c"]
    assert await op(kv, "KeyValue.SetDel", {"setName": "s1", "value": "b"}) == 1
    assert await op(kv, "KeyValue.SetDel", {"setName": "s1", "value": "b"}) == 0
    assert await op(kv, "KeyValue.SetQuery", {"setName": "s1"}) == ["a", "c"]
    with pytest.raises(CapabilityError, match="key 's1' holds a set, not a list"):
        await op(kv, "KeyValue.ListAdd", {"listName": "s1", "value": "x"})
    with pytest.raises(CapabilityError, match="key 's1' holds a set, not a list"):
        await op(kv, "KeyValue.ListClear", "s1")
    assert await op(kv, "KeyValue.SetClear", "s1") is True
    assert await op(kv, "KeyValue.SetClear", "s1") is False
    with pytest.raises(PayloadError, match="needs at least one set name"):
        await op(kv, "KeyValue.SetUnion", [])


# --- keyvalue: storage ------------------------------------------------------------------


async def test_keys_nats_does_not_allow_are_encoded(
    nc: Client, kv: KeyValueCapability, bucket_name: str
) -> None:
    keys = ["user:42 name", "a..b", ".dot", "trailing.", "ünïcode", "*", "_kv_internal", "ok.key"]
    for index, key in enumerate(keys):
        await op(kv, "KeyValue.Set", {"key": key, "value": str(index), "expires": 0})
    for index, key in enumerate(keys):
        assert await op(kv, "KeyValue.Get", key) == {"value": str(index), "exists": True}
    stored = set(await (await nc.jetstream().key_value(bucket_name)).keys())
    assert stored == {storage_key(key) for key in keys}
    assert "ok.key" in stored  # plain keys stay readable with `nats kv get`


async def test_bucket_is_created_with_history_one(nc: Client, kv: KeyValueCapability) -> None:
    await kv.open()
    status = await (await nc.jetstream().key_value(kv.settings.bucket)).status()
    assert status.history == 1
    assert status.stream_info.config.max_bytes == kv.settings.max_bytes


async def test_bucket_recreated_while_running(nc: Client, kv: KeyValueCapability) -> None:
    await op(kv, "KeyValue.Set", {"key": "k", "value": "v", "expires": 0})
    js = nc.jetstream()
    await js.delete_key_value(kv.settings.bucket)
    assert await op(kv, "KeyValue.Get", "k") == {"value": "", "exists": False}
    await op(kv, "KeyValue.Set", {"key": "k", "value": "again", "expires": 0})  # recreates it
    assert await op(kv, "KeyValue.Get", "k") == {"value": "again", "exists": True}
    # Someone else recreates it with other limits: we keep working with theirs.
    await js.delete_key_value(kv.settings.bucket)
    await js.create_key_value(bucket=kv.settings.bucket, history=5)
    assert await op(kv, "KeyValue.Increment", {"key": "n", "value": 2}) == 2
    assert await op(kv, "KeyValue.ListAdd", {"listName": "l", "value": "x"}) == 1


async def test_bucket_with_direct_get_recreated_without(nc: Client, kv: KeyValueCapability) -> None:
    # Bound to a bucket that serves direct gets; its replacement does not, so our next
    # direct get finds no responders and must rebind instead of failing.
    js = nc.jetstream()
    await js.create_key_value(bucket=kv.settings.bucket, history=1, direct=True)
    await op(kv, "KeyValue.Set", {"key": "k", "value": "v", "expires": 0})
    assert await op(kv, "KeyValue.Get", "k") == {"value": "v", "exists": True}
    await js.delete_key_value(kv.settings.bucket)
    await js.create_key_value(bucket=kv.settings.bucket, history=1, direct=False)
    assert await op(kv, "KeyValue.Get", "k") == {"value": "", "exists": False}
    assert await op(kv, "KeyValue.SetAdd", {"setName": "s", "value": "m"}) == 1


async def test_full_bucket_and_big_values(nc: Client, bucket_name: str) -> None:
    small = KeyValueSettings(bucket=bucket_name, storage="memory", max_bytes=4096,
                             max_value_bytes=1024, max_items=3)  # fmt: skip
    kv = KeyValueCapability(nc, small)
    with pytest.raises(CapabilityError, match="would be 2000 bytes, the limit is 1024"):
        await op(kv, "KeyValue.Set", {"key": "big", "value": "x" * 2000, "expires": 0})
    with pytest.raises(CapabilityUnavailable, match="is full"):
        for index in range(10):
            await op(kv, "KeyValue.Set", {"key": f"k{index}", "value": "x" * 1000, "expires": 0})
    for value in "abc":
        await op(kv, "KeyValue.SetAdd", {"setName": "s", "value": value})
    with pytest.raises(CapabilityError, match="would have 4 items, the limit is 3"):
        await op(kv, "KeyValue.SetAdd", {"setName": "s", "value": "d"})


async def test_no_jetstream_is_a_clear_error(tmp_path: Any, nats_server: Any) -> None:
    from lattice_testing import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(nats_server.path), "-a", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = await _connect_retrying(f"nats://127.0.0.1:{port}")
        try:
            kv = KeyValueCapability(client, KeyValueSettings(storage="memory", api_timeout=0.5))
            with pytest.raises(CapabilityUnavailable, match="JetStream"):
                await op(kv, "KeyValue.Set", {"key": "k", "value": "v", "expires": 0})
        finally:
            await client.close()
    finally:
        proc.terminate()
        await proc.wait()


async def _connect_retrying(url: str) -> Client:
    for _ in range(100):
        try:
            return await nats.connect(url, allow_reconnect=False, connect_timeout=0.5)
        except (OSError, nats.errors.Error):
            await asyncio.sleep(0.05)
    raise AssertionError(f"cannot connect to {url}")


# --- registry ---------------------------------------------------------------------------


async def test_registry_enforces_claims(
    nc: Client, kv: KeyValueCapability, messaging: MessagingCapability
) -> None:
    caps = Capabilities([kv, messaging])
    assert list(caps) == [KEYVALUE, MESSAGING]
    with pytest.raises(CapabilityDenied) as denied:
        await caps.call(ACTOR, [MESSAGING], "default", KEYVALUE, "KeyValue.Get", pack("k"))
    assert str(denied.value) == (
        f"actor {ACTOR} is not allowed to use wasmcloud:keyvalue: missing capability claim"
    )
    assert isinstance(denied.value, HostCallError)  # the sandbox reports it to the guest
    response = await caps.call(ACTOR, [KEYVALUE], "default", KEYVALUE, "KeyValue.Get", pack("k"))
    assert unpack(response) == {"value": "", "exists": False}
    with pytest.raises(UnknownCapability, match="wasmcloud:blobstore is not served by this host"):
        await caps.call(ACTOR, ["wasmcloud:blobstore"], "", "wasmcloud:blobstore", "Get", b"")
    with pytest.raises(CapabilityDenied):  # the claim is checked before the namespace
        await caps.call(ACTOR, [], "", "wasmcloud:blobstore", "Get", b"")
    with pytest.raises(UnknownOperation, match=r"has no operation 'KeyValue\.Keys'"):
        await caps.call(ACTOR, [KEYVALUE], "default", KEYVALUE, "KeyValue.Keys", pack({}))
    with pytest.raises(ValueError, match="already registered"):
        caps.register(kv)


async def test_router_serves_builtins_device_capabilities_and_nothing_else(
    kv: KeyValueCapability,
) -> None:
    """The host's router in front of the registry: claims gate every capability."""
    from agent.lattice.hostcalls import HostCallRouter, LinkTable

    caps = {ACTOR: [KEYVALUE, "wasmcloud:builtin:numbergen"], "bare": []}
    router = HostCallRouter(caps.get, LinkTable(), capabilities=Capabilities([kv]))
    assert await router(ACTOR, "default", KEYVALUE, "KeyValue.Contains", pack("k")) == pack(False)
    guid = await router(ACTOR, "", "wasmcloud:builtin:numbergen", "NumberGen.GenerateGuid", b"")
    assert len(msgpack.unpackb(guid)) == 36
    with pytest.raises(HostCallError, match="no link exists for wasmcloud:httpclient"):
        await router(ACTOR, "b", "wasmcloud:httpclient", "Request", b"")
    with pytest.raises(CapabilityDenied, match="missing capability claim"):
        await router("bare", "default", KEYVALUE, "KeyValue.Contains", pack("k"))
    with pytest.raises(HostCallError, match="missing capability claim"):
        await router("bare", "", "wasmcloud:builtin:numbergen", "NumberGen.Random32", b"")
    with pytest.raises(HostCallError, match="not running"):
        await router("gone", "", KEYVALUE, "KeyValue.Contains", pack("k"))


async def test_registry_turns_crashes_into_host_errors(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        contract_id = "example:broken"

        async def handle(self, actor_id: str, operation: str, payload: bytes) -> bytes:
            raise RuntimeError("bug")

    caps = Capabilities([Broken()])
    with pytest.raises(CapabilityUnavailable, match=r"example:broken Op: internal error \(Runt"):
        await caps.call(ACTOR, ["example:broken"], "", "example:broken", "Op", b"")
    assert "capability example:broken failed" in caplog.text


# --- hostile payloads ------------------------------------------------------------------

_KV_OPS = ["Get", "Set", "Del", "Contains", "Increment", "ListAdd", "ListClear", "ListDel",
           "ListRange", "SetAdd", "SetDel", "SetQuery", "SetIntersection", "SetUnion",
           "SetClear"]  # fmt: skip
_FIELDS = ["key", "value", "expires", "listName", "setName", "start", "stop", "keys",
           "subject", "replyTo", "body", "timeoutMs"]  # fmt: skip
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=20),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
_payloads = st.one_of(
    st.binary(max_size=64),
    _values.map(pack),
    st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=5).map(pack),
    _values.map(lambda value: b"\xc1" + pack(value)),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operation=st.sampled_from(_KV_OPS), payload=_payloads)
async def test_hostile_keyvalue_payloads(
    kv: KeyValueCapability, operation: str, payload: bytes
) -> None:
    try:
        await kv.handle(ACTOR, f"KeyValue.{operation}", payload)
    except CapabilityError as exc:
        assert str(exc).startswith(f"wasmcloud:keyvalue KeyValue.{operation}: "), str(exc)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operation=st.sampled_from(["Messaging.Publish", "Messaging.Request"]), payload=_payloads)
async def test_hostile_messaging_payloads(nc: Client, operation: str, payload: bytes) -> None:
    capability = MessagingCapability(nc, MessagingLimits(default_timeout=0.01, max_timeout=0.01))
    try:
        await capability.handle(ACTOR, operation, payload)
    except CapabilityError as exc:
        assert str(exc).startswith(f"wasmcloud:messaging {operation}: "), str(exc)


# --- a real third-party actor, end to end ------------------------------------------------


async def test_echo_actor_publishes_through_the_capability(
    nc: Client,
    messaging: MessagingCapability,
    third_party_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """echo_messaging (wasmCloud/wascap fixture) answers a message by host-calling
    Messaging.Publish to its replyTo; that publish must reach a real NATS subscriber."""
    from agent.lattice.hostcalls import HostCallRouter, LinkTable
    from agent.runtime.sandbox import Sandbox
    from profiles import load_profile

    budgets = load_profile("generic-x86_64").budgets.replace(
        sandbox_workers=1, invocation_deadline_s=10.0, worker_memory_limit_mb=384
    )
    claims = {
        "echo": [MESSAGING, "wasmcloud:builtin:logging"],
        "mute": ["wasmcloud:builtin:logging"],
    }
    handler = HostCallRouter(claims.get, LinkTable(), capabilities=Capabilities([messaging]))
    inbox = f"_INBOX.edge.{uuid.uuid4().hex}"
    sub = await nc.subscribe(inbox)
    wasm = (third_party_dir / "echo_messaging_v0.9.0.wasm").read_bytes()
    message = pack({"subject": "echo.in", "replyTo": inbox, "body": b"hello"})
    async with Sandbox(budgets, host_call_handler=handler) as sandbox:
        await sandbox.load("echo", wasm)
        await sandbox.load("mute", wasm)
        result = await sandbox.invoke("echo", "MessageSubscriber.HandleMessage", message)
        assert result.response == b""
        received = await sub.next_msg(timeout=5)
        assert received.data == b"reply: hello"
        # Without the messaging claim the publish is refused and nothing is sent; the
        # actor sees the host error and logs it through wasmcloud:builtin:logging.
        result = await sandbox.invoke("mute", "MessageSubscriber.HandleMessage", message)
        (call,) = [call for call in result.host_calls if call.namespace == MESSAGING]
        assert call.error is not None
        assert call.error.endswith(
            "is not allowed to use wasmcloud:messaging: missing capability claim"
        )
        assert "actor mute is not allowed to use wasmcloud:messaging" in caplog.text
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.2)
