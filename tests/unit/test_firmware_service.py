"""The firmware endpoints' request handling, fuzzed: every request gets exactly one JSON
answer, bad input an error naming the problem, and nothing leaks an exception's repr."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import FirmwareDevice, FirmwareSettings
from agent.errors import DeviceUnavailable
from agent.lattice.refs import ModuleCache
from firmware_bridge.bridge import FirmwareBridge
from firmware_bridge.device import DeviceState
from firmware_bridge.link import LinkStats
from firmware_bridge.service import DeviceEndpoints, endpoint
from firmware_bridge.session import SMPSession
from firmware_bridge.simulator import SimulatedMCU

LEAKS = re.compile(r"Traceback|object at 0x|\w+Error\(|\w+Exception\(")


class FakeRequest:
    """What nats.micro hands a handler, recording the answers."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.subject = "lattice-edge.firmware.test.mcu0.x"
        self.answers: list[tuple[str, bytes, str]] = []

    async def respond(self, data: bytes = b"", headers: Any = None) -> None:
        self.answers.append(("ok", data, ""))

    async def respond_error(self, code: str, description: str, data: bytes = b"") -> None:
        self.answers.append((code, data, description))


class LoopbackLink:
    """A link straight into a simulated MCU's request handler (no I/O): a unit-test seam."""

    description = "loopback"

    def __init__(self) -> None:
        self.mcu = SimulatedMCU()
        self.stats = LinkStats()
        self.answers: list[bytes] = []

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_lost(self) -> None:
        await asyncio.Event().wait()

    def discard_pending(self) -> None:
        self.answers.clear()

    async def send(self, frame: bytes) -> None:
        answer, _ = self.mcu.handle(frame)
        if answer is not None:
            self.answers.append(answer)

    async def receive(self, timeout: float) -> bytes | None:
        return self.answers.pop(0) if self.answers else None


async def serve(op: str, data: bytes, tmp: Path, *, online: bool = False) -> FakeRequest:
    device_settings = FirmwareDevice("mcu0", "serial", "/nonexistent/ttyACM9", 115200, None,
                                     None, 0.2)  # fmt: skip
    settings = FirmwareSettings((), 5.0, 1.0, 1.0, (device_settings,))
    async with asyncio.TaskGroup() as tasks:
        bridge = FirmwareBridge(
            settings, nats_client=None, host_id="NTEST", lattice="t",
            module_cache=ModuleCache(tmp / "modules"), telemetry_period_s=5.0, tasks=tasks,
            emit=lambda _name, _data: None,
        )  # fmt: skip
        device = bridge.devices["mcu0"]
        if online:
            device.link = LoopbackLink()
            device.session = SMPSession(device.link, timeout_s=0.05, attempts=1)
            device.state = DeviceState.ONLINE
        handlers = DeviceEndpoints(bridge, device)
        request = FakeRequest(data)
        await endpoint(getattr(handlers, op))(request)
    return request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)  # fmt: skip
objects = st.dictionaries(
    st.sampled_from(["image", "confirm", "text", "group", "extra", ""]), json_values, max_size=3
)
bodies = st.one_of(
    st.binary(max_size=200),
    objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from(["info", "echo", "stats", "reset", "update"]), data=bodies)
def test_every_request_gets_one_clean_answer(op: str, data: bytes, tmp_path_factory: Any) -> None:
    request = asyncio.run(serve(op, data, tmp_path_factory.mktemp("svc")))
    assert len(request.answers) == 1
    code, body, description = request.answers[0]
    answer = json.loads(body)
    assert isinstance(answer, dict)
    if code == "ok":
        assert op == "info"  # the device is offline: only info answers without an error
        assert answer["state"] == "offline"
    else:
        assert code in {"400", "409", "422", "502", "503"}
        assert answer["code"] == int(code) and answer["error"] == description
        assert description and not LEAKS.search(description), description


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from(["info", "echo", "stats", "reset"]), data=bodies)
def test_every_request_to_an_answering_device_gets_one_clean_answer(
    op: str, data: bytes, tmp_path_factory: Any
) -> None:
    request = asyncio.run(serve(op, data, tmp_path_factory.mktemp("svc"), online=True))
    assert len(request.answers) == 1
    code, body, description = request.answers[0]
    answer = json.loads(body)
    if code == "ok":
        assert isinstance(answer, dict) and answer
        if op == "info":
            assert answer["images"][0]["version"] == "1.0.0"
    else:
        assert code in {"400", "502"}, (code, description)
        assert answer["error"] == description and not LEAKS.search(description)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    def answer(op: str, body: bytes) -> tuple[str, str]:
        code, _, description = asyncio.run(serve(op, body, tmp_path)).answers[0]
        return code, description

    assert answer("echo", b"[1]") == ("400", "the request must be a JSON object")
    assert answer("echo", b"{nope") == ("400", "the request is not JSON")
    assert answer("echo", b'{"text": 5}')[1].startswith("'text' must be a string")
    assert "unknown field 'x'" in answer("reset", b'{"x": 1}')[1]
    assert answer("update", b'{"image": "file:///etc/shadow"}') == (
        "400",
        "file references are not accepted over the lattice: use nats-os://BUCKET/OBJECT or "
        "sha256:<digest> of an image in the module cache",
    )
    assert "64 hex digits" in answer("update", b'{"image": "sha256:abc"}')[1]
    assert answer("update", b'{"image": "oci://registry/x"}')[0] == "400"
    assert (
        answer("update", b'{"image": "x", "confirm": "yes"}')[1]
        == "'confirm' must be true or false"
    )
    code, description = answer("echo", b'{"text": "hi"}')
    assert code == "503" and "offline" in description


def test_an_unexpected_failure_says_internal_error_only() -> None:
    async def broken(_body: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internals at /home/x")

    async def unavailable(_body: dict[str, Any]) -> dict[str, Any]:
        raise DeviceUnavailable("mcu0 is offline")

    async def go() -> list[tuple[str, bytes, str]]:
        first, second = FakeRequest(b""), FakeRequest(b"")
        await endpoint(broken)(first)
        await endpoint(unavailable)(second)
        return first.answers + second.answers

    (code, body, description), (code2, _, description2) = asyncio.run(go())
    assert (code, description) == ("500", "internal error")
    assert b"secret" not in body
    assert (code2, description2) == ("503", "mcu0 is offline")
