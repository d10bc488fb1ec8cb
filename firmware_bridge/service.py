"""The bridge's ``nats.micro`` service: one endpoint group per MCU, on the host's lattice.

Service ``lattice-edge-firmware`` (found with the standard ``$SRV.PING|INFO|STATS``), with

* ``lattice-edge.firmware.{host}.list`` — the host's devices and their states;
* ``lattice-edge.firmware.{host}.{device}.info|echo|stats|reset|update`` per MCU.

Requests and answers are JSON objects (docs/firmware.md lists them). Every handler is
wrapped: a malformed request is answered with an error naming the problem, an error of ours
with its message and a code, and anything unexpected with "internal error" and a log line —
never nats-py's default ``repr()`` of an exception, which would leak internals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import (
    ActorRefError,
    ControlRequestError,
    DeviceBusy,
    DeviceError,
    DeviceUnavailable,
    ImageRejected,
    LatticeEdgeError,
    SMPFrameError,
)
from agent.lattice.refs import parse_ref
from agent.logs import escape
from firmware_bridge import events
from firmware_bridge.device import Device, DeviceState

if TYPE_CHECKING:
    from firmware_bridge.bridge import FirmwareBridge

__all__ = ["SERVICE_NAME", "Handler", "endpoint", "start_service"]

logger = logging.getLogger("lattice_edge.firmware.service")

SERVICE_NAME = "lattice-edge-firmware"
MAX_REQUEST = 64 * 1024
MAX_ECHO = 256
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _code(exc: LatticeEdgeError) -> str:
    if isinstance(exc, ControlRequestError | ActorRefError):
        return "400"
    if isinstance(exc, DeviceBusy):
        return "409"
    if isinstance(exc, ImageRejected):
        return "422"
    if isinstance(exc, DeviceError | SMPFrameError):
        return "502"
    if isinstance(exc, DeviceUnavailable):
        return "503"
    return "500"


def parse_request(data: bytes) -> dict[str, Any]:
    """A request body: empty, or a JSON object of at most 64 KiB."""
    if len(data) > MAX_REQUEST:
        raise ControlRequestError(f"the request is {len(data)} bytes; the limit is {MAX_REQUEST}")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ControlRequestError("the request is not JSON") from exc
    if not isinstance(body, dict):
        raise ControlRequestError("the request must be a JSON object")
    return body


def _only(body: dict[str, Any], *known: str) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        # The name is the requester's: escaped, so the error fits a header and a log line.
        raise ControlRequestError(f"unknown field '{escape(unknown[0])}' (known: {allowed})")


def endpoint(handler: Handler) -> Callable[[Any], Awaitable[None]]:
    """Wrap a handler for ``nats.micro``: JSON in and out, errors that leak nothing."""

    async def serve(request: Any) -> None:
        try:
            answer = await handler(parse_request(bytes(request.data)))
        except LatticeEdgeError as exc:
            extra = {"reason": exc.reason} if isinstance(exc, ImageRejected) else {}
            await _error(request, _code(exc), str(exc), extra)
            return
        except Exception:
            logger.exception("firmware endpoint %s failed", request.subject)
            await _error(request, "500", "internal error")
            return
        try:
            await request.respond(json.dumps(answer).encode())
        except Exception as exc:  # the requester or the connection went away
            logger.debug("firmware endpoint %s: cannot reply: %s", request.subject, exc)

    return serve


async def _error(
    request: Any, code: str, message: str, extra: dict[str, Any] | None = None
) -> None:
    body = json.dumps({"error": message, "code": int(code), **(extra or {})}).encode()
    try:
        await request.respond_error(code, message.replace("\r", " ").replace("\n", " "), body)
    except Exception as exc:
        logger.debug("firmware endpoint %s: cannot reply: %s", request.subject, exc)


class DeviceEndpoints:
    """The handlers of one MCU.

    A device that is not answering (offline, unresponsive, not probed yet) gets an error at
    once instead of each request waiting out its retries behind the others; the device's
    own task keeps probing it and the endpoints follow its state.
    """

    def __init__(self, bridge: FirmwareBridge, device: Device) -> None:
        self.bridge = bridge
        self.device = device

    def _answering(self) -> None:
        device = self.device
        if device.state is not DeviceState.ONLINE and not device.updating:
            raise DeviceUnavailable(
                f"device {device.name} is {device.state.value}: {device.reason}"
            )

    async def info(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body)
        device = self.device
        answer = device.to_json()
        answer.update(link=device.link.stats.to_json(), session=device.session.stats.to_json(),
                      last_update=device.last_update)  # fmt: skip
        if device.updating or device.state is not DeviceState.ONLINE:
            return answer
        try:
            params = await device.call(lambda s: s.params())
            app = await device.call(lambda s: s.app_info())
            images = await device.call(lambda s: s.image_states())
        except (DeviceUnavailable, DeviceError, SMPFrameError) as exc:
            answer["error"] = str(exc)
            return answer
        answer.update(
            mcumgr={"buf_size": params.buf_size, "buf_count": params.buf_count} if params else None,
            app_info=app.output if app else None,
            images=[slot.to_json() for slot in images],
        )
        try:
            answer["stat_groups"] = list(await device.call(lambda s: s.stat_groups()))
        except DeviceError:
            answer["stat_groups"] = []
        return answer

    async def echo(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, "text")
        text = body.get("text", "")
        if not isinstance(text, str) or len(text) > MAX_ECHO:
            raise ControlRequestError(f"'text' must be a string of at most {MAX_ECHO} characters")
        self._answering()
        return {"text": await self.device.call(lambda s: s.echo(text))}

    async def stats(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, "group")
        group = body.get("group")
        if group is not None and (not isinstance(group, str) or not 0 < len(group) <= 64):
            raise ControlRequestError("'group' must be a stat group name of 1-64 characters")
        if self.device.updating:
            raise DeviceBusy(f"{self.device.name} is being updated")
        self._answering()
        names = [group] if group else list(await self.device.call(lambda s: s.stat_groups()))
        groups = {}
        for name in names:
            stats = await self.device.call(lambda s, n=name: s.stat_group(n))  # type: ignore[misc]
            groups[stats.name] = stats.fields
        return {"device": self.device.name, "groups": groups}

    async def reset(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body)
        if self.device.updating:
            raise DeviceBusy(f"{self.device.name} is being updated; not resetting it")
        self._answering()
        await self.device.call(lambda s: s.reset())
        return {"device": self.device.name, "reset": True}

    async def update(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, "image", "confirm")
        image = body.get("image")
        confirm = body.get("confirm", True)
        if not isinstance(image, str) or not 0 < len(image) <= 1024:
            raise ControlRequestError(
                "'image' must be an image reference (nats-os://… or sha256:…)"
            )
        if not isinstance(confirm, bool):
            raise ControlRequestError("'confirm' must be true or false")
        if parse_ref(image).scheme == "file":
            raise ControlRequestError(
                "file references are not accepted over the lattice: use nats-os://BUCKET/OBJECT "
                "or sha256:<digest> of an image in the module cache"
            )
        if not self.device.updating:
            self._answering()
        return await self.bridge.begin_update(self.device, image, confirm)


async def start_service(bridge: FirmwareBridge) -> Any:
    """Register the service and its endpoints on the bridge's NATS connection."""
    from nats import micro

    service = await micro.add_service(
        bridge.nats,
        name=SERVICE_NAME,
        version=__version__.split("+")[0],
        description="Lattice Edge firmware bridge: MCUs over mcumgr SMP",
        metadata={"host_id": bridge.host_id, "lattice": bridge.lattice},
    )

    async def device_list(body: dict[str, Any]) -> dict[str, Any]:
        _only(body)
        return {"host_id": bridge.host_id,
                "devices": [d.to_json() for d in bridge.devices.values()]}  # fmt: skip

    await service.add_endpoint(
        name="list", subject=events.list_subject(bridge.host_id), handler=endpoint(device_list)
    )
    for device in bridge.devices.values():
        handlers = DeviceEndpoints(bridge, device)
        group = service.add_group(name=events.device_subject(bridge.host_id, device.name))
        for name in ("info", "echo", "stats", "reset", "update"):
            await group.add_endpoint(
                name=name, handler=endpoint(getattr(handlers, name)),
                metadata={"device": device.name},
            )  # fmt: skip
    return service
