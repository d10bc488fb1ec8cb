"""Every third-party actor behaves as its README says, through the sandbox (real workers)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from _sandboxkit import Recorder, budgets

from agent.errors import GuestError, TrapError
from agent.runtime.builtins import BuiltinHostCalls
from agent.runtime.sandbox import Sandbox

MODULES = {
    "zig": "hello_zig.wasm",
    "as": "hello_as.wasm",
    "tinygo": "hello_tinygo.wasm",
    "basic": "wasm_basic.wasm",
    "echo_messaging": "echo_messaging_v0.9.0.wasm",
    "logger": "logger.wasm",
}
HTTP_GET = {"method": "GET", "path": "/", "queryString": "", "header": {}, "body": b""}


def pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False)


async def load_all(sandbox: Sandbox, folder: Path) -> None:
    for actor_id, filename in MODULES.items():
        await sandbox.load(actor_id, (folder / filename).read_bytes())


async def test_outputs_host_calls_and_console(third_party_dir: Path) -> None:
    recorder = Recorder()
    async with Sandbox(budgets(), host_call_handler=recorder) as sandbox:
        await load_all(sandbox, third_party_dir)

        result = await sandbox.invoke("zig", "hello", b"this is a test")
        assert result.response == b"Hello, this is a test!"
        assert [(h.binding, h.namespace, h.operation, h.payload) for h in result.host_calls] == [
            ("myBinding", "sample", "hello", b"Simon")
        ]
        assert recorder.calls[-1] == ("zig", "myBinding", "sample", "hello", b"Simon")

        for actor_id in ("as", "tinygo"):
            result = await sandbox.invoke(actor_id, "hello", b"anything")
            assert result.response == b"Hello"
            assert recorder.calls[-1] == (actor_id, "myBinding", "sample", "hello", b"Simon")

        result = await sandbox.invoke("basic", "ping", b"P-42")
        assert result.response == b"P-42"
        assert result.console == (
            "IN_WASM: Received request for `ping` operation with payload : P-42",
        )
        assert recorder.calls[-1] == ("basic", "binding", "sample:namespace", "pong", b"P-42")

        message = {"subject": "echo.in", "replyTo": "_INBOX.abc", "body": b"hello"}
        result = await sandbox.invoke(
            "echo_messaging", "MessageSubscriber.HandleMessage", pack(message)
        )
        assert result.response == b""
        (call,) = result.host_calls
        assert (call.binding, call.namespace, call.operation) == (
            "default",
            "wasmcloud:messaging",
            "Messaging.Publish",
        )
        assert unpack(call.payload) == {"subject": "_INBOX.abc", "body": b"reply: hello"}
        result = await sandbox.invoke(
            "echo_messaging",
            "MessageSubscriber.HandleMessage",
            pack({"subject": "echo.in", "body": b"hello"}),
        )
        assert (result.response, result.host_calls) == (b"", ())
        result = await sandbox.invoke("echo_messaging", "Actor.HealthRequest", pack({}))
        assert unpack(result.response) == {"healthy": True}

        result = await sandbox.invoke("logger", "HandleRequest", pack(HTTP_GET))
        assert unpack(result.response) == {
            "statusCode": 200,
            "status": "OK",
            "header": {},
            "body": b"",
        }
        logs = [(h.binding, h.namespace, h.operation, unpack(h.payload)) for h in result.host_calls]
        assert logs == [
            ("default", "wasmcloud:logging", "WriteLog", entry)
            for entry in (
                {
                    "target": "LOGGING_ACTORINFO",
                    "level": "info",
                    "text": "Coercing Rust String to str",
                },
                {"target": "GETLOG", "level": "info", "text": "Received a GET request"},
                {
                    "target": "LOGGING_ACTORINFO",
                    "level": "debug",
                    "text": "Finished matching HTTP method, returning OK",
                },
            )
        ]
        result = await sandbox.invoke(
            "logger", "HandleRequest", pack({**HTTP_GET, "method": "PATCH"})
        )
        entries = [unpack(h.payload) for h in result.host_calls]
        assert {
            "level": "error",
            "text": "Received an unsupported HTTP Request: PATCH",
        }.items() <= (
            next(e for e in entries if isinstance(e, dict) and e["level"] == "error").items()
        )
        result = await sandbox.invoke("logger", "HealthRequest", pack({"placeholder": True}))
        assert unpack(result.response) == {"healthy": True, "message": ""}


@pytest.mark.parametrize(
    ("actor_id", "operation", "message"),
    [
        ("zig", "nope", "Could not find function nope"),
        ("as", "nope", 'Could not find function "nope"'),
        ("tinygo", "nope", 'Could not find function "nope"'),
        ("basic", "nope", "No handler registered for function nope"),
        (
            "echo_messaging",
            "Foo.Bar",
            "Guest call failed for method Foo.Bar: method not handled Foo.Bar - unknown method",
        ),
    ],
)
async def test_unknown_operations_are_guest_errors(
    third_party_dir: Path, actor_id: str, operation: str, message: str
) -> None:
    async with Sandbox(budgets(sandbox_workers=1), host_call_handler=Recorder()) as sandbox:
        await sandbox.load(actor_id, (third_party_dir / MODULES[actor_id]).read_bytes())
        with pytest.raises(GuestError) as caught:
            await sandbox.invoke(actor_id, operation, b"")
        assert str(caught.value) == message
        assert type(caught.value) is GuestError


async def test_failing_host_calls(third_party_dir: Path) -> None:
    recorder = Recorder(fail="the provider is down")
    async with Sandbox(budgets(), host_call_handler=recorder) as sandbox:
        await load_all(sandbox, third_party_dir)
        with pytest.raises(GuestError, match=r"^Host error: the provider is down$"):
            await sandbox.invoke("zig", "hello", b"x")
        with pytest.raises(TrapError, match="unreachable"):  # AssemblyScript traps instead
            await sandbox.invoke("as", "hello", b"x")
        assert (await sandbox.invoke("tinygo", "hello", b"x")).response == b"Hello"
        with pytest.raises(GuestError, match=r"^Host error: the provider is down$"):
            await sandbox.invoke("basic", "ping", b"x")
        with pytest.raises(
            GuestError, match=r"^Guest call failed: Host error: the provider is down$"
        ):
            await sandbox.invoke("logger", "HandleRequest", pack(HTTP_GET))
        # A trap or a failed call leaves every actor usable.
        recorder.fail = None
        assert (await sandbox.invoke("as", "hello", b"x")).response == b"Hello"
        assert (await sandbox.invoke("zig", "hello", b"again")).response == b"Hello, again!"


async def test_default_handler_has_no_links(third_party_dir: Path) -> None:
    async with Sandbox(budgets(sandbox_workers=1), host_call_handler=BuiltinHostCalls()) as sandbox:
        await sandbox.load("logger", (third_party_dir / MODULES["logger"]).read_bytes())
        expected = (
            "Guest call failed: Host error: no link exists for wasmcloud:logging on binding default"
        )
        with pytest.raises(GuestError) as caught:
            await sandbox.invoke("logger", "HandleRequest", pack(HTTP_GET))
        assert str(caught.value) == expected
