"""``lattice-edge firmware …``: the MCUs on the local host's firmware bridge, through the
running agent (which owns the serial ports), and the MCU simulator."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.cli.common import (
    config_option,
    echo_json,
    host_port_option,
    json_option,
    load_config_for,
    no_data_output,
    setup_logging,
    timeout_option,
)

if TYPE_CHECKING:
    from agent.lattice.client import LatticeClient

__all__ = ["firmware"]

IDLE_TIMEOUT_S = 120.0
T = TypeVar("T")
# What 'firmware info --json' always prints; the agent leaves out what an MCU that is not
# answering cannot tell, and the CLI fills those in as null so the keys stay stable.
INFO_KEYS = ("device", "transport", "where", "state", "reason", "updating", "link", "session",
             "last_update", "error", "mcumgr", "app_info", "images", "stat_groups")  # fmt: skip
# What the last line of 'firmware update --json' always has (a succeeded update).
SUCCEEDED_KEYS = ("event", "device", "update_id", "version", "hash", "confirmed", "resumed_from",
                  "seconds", "message")  # fmt: skip


@click.group()
def firmware() -> None:
    """List, inspect and update MCUs, or simulate one.

    The MCUs are the [[firmware.devices]] of this host's config, which the running agent
    reaches over serial or UDP with mcumgr's SMP (it owns the ports): list, info and
    update ask the agent. simulate runs a stand-in MCU to try it all without hardware.
    """


# --- talking to the running agent ------------------------------------------------------


def _on_local_host(
    config_path: Path | None, timeout: float, work: Callable[[LatticeClient, str], Awaitable[T]]
) -> T:
    """Run ``work`` with a lattice client on this device's leaf and the host's id."""
    from agent.cli.service import local_host_id
    from agent.lattice.client import connect_local

    config = load_config_for(config_path)
    host_id = local_host_id(config)

    async def go() -> T:
        async with connect_local(config, connect_timeout=min(timeout, 3.0)) as client:
            return await work(client, host_id)

    return asyncio.run(go())


async def _request(
    client: LatticeClient, host_id: str, device: str | None, op: str, body: dict[str, Any],
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """One request to a firmware endpoint of the host (of one of its devices, or the
    bridge's own with ``device`` None); an error answer becomes a FirmwareError. Errors
    speak of the agent and its config, not of subjects."""
    import nats.errors

    from agent.errors import AgentStateError, FirmwareError

    subject = _subject(host_id, device, op)
    what = f"firmware {op} request" + (f" for {device}" if device else "")
    try:
        reply = await client.nats.request(subject, json.dumps(body).encode(), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise AgentStateError(f"{_nobody_answers(device)}; 'lattice-edge status' says whether "
                              "the agent runs") from None  # fmt: skip
    except (nats.errors.Error, TimeoutError) as exc:
        raise AgentStateError(
            f"the agent did not answer the {what} within {timeout:g} s (pass a longer --timeout)"
        ) from exc
    try:
        answer = json.loads(reply.data)
    except ValueError as exc:
        raise AgentStateError(f"the agent's answer to the {what} is not JSON") from exc
    if not isinstance(answer, dict):
        raise AgentStateError(f"the agent's answer to the {what} is not a JSON object")
    if "error" in answer:
        raise FirmwareError(str(answer["error"]))
    return answer


def _subject(host_id: str, device: str | None, op: str) -> str:
    base = f"lattice-edge.firmware.{host_id}"
    return f"{base}.{op}" if device is None else f"{base}.{device}.{op}"


def _nobody_answers(device: str | None) -> str:
    """Why nothing answers (the bridge, or ``device``), in terms of the agent's config."""
    if device is None:
        return ("no firmware bridge answers: is the agent running, with a device in "
                "[[firmware.devices]] of its config?")  # fmt: skip
    return (f"no firmware device '{device}' answers: is the agent running, with that "
            "device in [[firmware.devices]]? ('lattice-edge firmware list' shows "
            "its devices)")  # fmt: skip


# --- list / info -----------------------------------------------------------------------


@firmware.command("list")
@json_option
@config_option
@timeout_option(5.0, "for the agent's answer")
def firmware_list(as_json: bool, config_path: Path | None, timeout: float) -> None:
    """List this host's MCUs and their states.

    A device is online, connecting (its port is open, the MCU has not answered yet),
    unresponsive (it stopped answering) or offline (its port cannot be opened); 'reason'
    says why it is not online.

    \b
    Examples:
      lattice-edge firmware list
      lattice-edge firmware list --json

    \b
    JSON keys: host_id, devices
    """

    async def work(client: LatticeClient, host_id: str) -> dict[str, Any]:
        return await _request(client, host_id, None, "list", {}, timeout)

    answer = _on_local_host(config_path, timeout, work)
    if as_json:
        echo_json(answer)
        return
    for device in answer.get("devices", []):
        flag = "  (updating)" if device.get("updating") else ""
        click.echo(f"{device['device']:16} {device['state']:13} {device['transport']:6} "
                   f"{device['where']}{flag}")  # fmt: skip


@firmware.command("info")
@click.argument("device")
@json_option
@config_option
@timeout_option(30.0, "for the agent's answer")
def firmware_info(device: str, as_json: bool, config_path: Path | None, timeout: float) -> None:
    """Show an MCU's state, images, mcumgr parameters and stats.

    An online MCU is asked for its mcumgr parameters, application info, image slots and
    stat groups; for one that is not answering those are null, and 'reason' (or 'error')
    says why. 'link' and 'session' count the bridge's traffic with it.

    \b
    Examples:
      lattice-edge firmware info sim0
      lattice-edge firmware info sim0 --json

    \b
    JSON keys: device, transport, where, state, reason, updating, link, session,
      last_update, error, mcumgr, app_info, images, stat_groups
    """

    async def work(client: LatticeClient, host_id: str) -> dict[str, Any]:
        return await _request(client, host_id, device, "info", {}, timeout)

    answer = _on_local_host(config_path, timeout, work)
    if as_json:
        echo_json({**dict.fromkeys(INFO_KEYS), **answer})
        return
    lines = [f"{answer['device']}: {answer['state']} ({answer['transport']} {answer['where']})"]
    if answer.get("error"):
        lines.append(f"  error     : {answer['error']}")
    if answer.get("app_info"):
        lines.append(f"  app       : {answer['app_info']}")
    if answer.get("mcumgr"):
        lines.append(f"  mcumgr    : buf_size {answer['mcumgr']['buf_size']}, "
                     f"buf_count {answer['mcumgr']['buf_count']}")  # fmt: skip
    for slot in answer.get("images", []):
        flags = [name for name in ("active", "confirmed", "pending", "permanent", "bootable")
                 if slot.get(name)]  # fmt: skip
        lines.append(f"  slot {slot['slot']}    : {slot['version']:12} {(slot['hash'] or '')[:16]}"
                     f"  {' '.join(flags)}")  # fmt: skip
    if answer.get("stat_groups") is not None:
        lines.append(f"  stats     : {', '.join(answer['stat_groups']) or 'none'}")
    if answer.get("last_update"):
        last = answer["last_update"]
        lines.append(f"  last OTA  : {last['outcome']}: {last['message']}")
    click.echo("\n".join(lines))


# --- update ----------------------------------------------------------------------------


@firmware.command("update")
@click.argument("device")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-confirm", is_flag=True, help="Leave the new image in test mode (it reverts "
              "at the next reset unless confirmed).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="Print each step as a JSON line (the last line's keys are below).")  # fmt: skip
@config_option
@timeout_option(120.0, "for each answer of the agent")
def firmware_update(
    device: str, image: Path, no_confirm: bool, as_json: bool, config_path: Path | None,
    timeout: float,
) -> None:  # fmt: skip
    """Update an MCU with a signed MCUboot image.

    The running agent checks IMAGE against firmware.trusted_keys before sending any of
    it, uploads it to DEVICE (resuming an interrupted upload), tests it, resets the MCU,
    watches it for the health window and confirms it. Exit status 1 when it is refused,
    rolled back or lost.

    With --json each step is printed as it happens, one JSON object per line whose
    'event' is started, progress, failed or succeeded; the last line of an update that
    succeeded has the keys below.

    \b
    Examples:
      lattice-edge firmware update sim0 ./zephyr.signed.bin
      lattice-edge firmware update sim0 ./zephyr.signed.bin --json

    \b
    JSON keys: event, device, update_id, version, hash, confirmed, resumed_from, seconds,
      message
    """
    data = _read_image(image)
    show = _JsonProgress() if as_json else _BarProgress()

    async def work(client: LatticeClient, host_id: str) -> dict[str, Any]:
        # The agent reads no path it is handed: the image goes through the device's own
        # module bucket, as `actor start FILE` does, and is removed once the agent has it.
        ref = await client.upload_module(data)
        try:
            return await _follow_update(client, host_id, device, ref, not no_confirm, show,
                                        timeout)  # fmt: skip
        finally:
            await _unstage(client, ref)

    result = _on_local_host(config_path, timeout, work)
    show.finish(result)


def _read_image(image: Path) -> bytes:
    """The image file's bytes; one clear error when it cannot be an image."""
    from agent.errors import ImageRejected
    from firmware_bridge.image import MAX_IMAGE

    try:
        size = image.stat().st_size
        if size > MAX_IMAGE:
            raise ImageRejected(f"{image} is {size} bytes, over the {MAX_IMAGE}-byte limit",
                                reason="malformed")  # fmt: skip
        return image.read_bytes()
    except OSError as exc:
        raise ImageRejected(f"cannot read {image}: {exc.strerror or exc}",
                            reason="malformed") from exc  # fmt: skip


async def _unstage(client: LatticeClient, ref: str) -> None:
    from agent.lattice.refs import MODULE_BUCKET

    try:
        store = await client.nats.jetstream(timeout=5).object_store(MODULE_BUCKET)
        await store.delete(ref.rsplit("/", 1)[-1])
    except Exception as exc:  # best effort: the agent keeps its own copy in its cache
        click.echo(f"note: could not remove the staged image: {exc}", err=True)


async def _follow_update(
    client: LatticeClient, host_id: str, device: str, ref: str, confirm: bool, show: Any,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    from agent.errors import UpdateFailed

    kinds = ("firmware_update_progress", "firmware_update_succeeded", "firmware_update_failed")
    async with client.events(*kinds) as queue:
        answer = await _request(
            client, host_id, device, "update", {"image": ref, "confirm": confirm},
            timeout=timeout,
        )  # fmt: skip
        update_id = answer["update_id"]
        show.started(answer)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), IDLE_TIMEOUT_S)
            except TimeoutError:
                resolved = await _resolve(client, host_id, device, update_id, timeout)
                if resolved is None:
                    continue
                event = resolved
            data = event.get("data", {})
            if event.get("source") != host_id or data.get("update_id") != update_id:
                continue
            kind = event["type"].rsplit(".", 1)[-1]
            if kind == "firmware_update_progress":
                show.progress(data)
            elif kind == "firmware_update_succeeded":
                result: dict[str, Any] = data
                return result
            else:
                show.failed(data)
                raise UpdateFailed(
                    f"update of {device} {data.get('outcome')}: {data.get('reason')}",
                    outcome=str(data.get("outcome")),
                    step=str(data.get("step")),
                )


async def _resolve(
    client: LatticeClient, host_id: str, device: str, update_id: str, timeout: float
) -> dict[str, Any] | None:
    """No event for a long time: ask the device's info how the update ended, if it did."""
    from agent.errors import AgentStateError

    info = await _request(client, host_id, device, "info", {}, timeout)
    last = info.get("last_update") or {}
    if info.get("updating") or last.get("update_id") != update_id:
        if not info.get("updating"):
            raise AgentStateError(f"lost track of update {update_id} on {device}")
        return None
    kind = "succeeded" if last.get("outcome") == "succeeded" else "failed"
    data = {"update_id": update_id, "outcome": last.get("outcome"), "reason": last.get("message"),
            "message": last.get("message")}  # fmt: skip
    return {"type": f"firmware_update_{kind}", "source": host_id, "data": data}


class _JsonProgress:
    def started(self, answer: dict[str, Any]) -> None:
        click.echo(json.dumps({"event": "started", **answer}))

    def progress(self, data: dict[str, Any]) -> None:
        click.echo(json.dumps({"event": "progress", **data}))

    def failed(self, data: dict[str, Any]) -> None:
        click.echo(json.dumps({"event": "failed", **data}))

    def finish(self, result: dict[str, Any]) -> None:
        # An update resolved from the device's info (its events lost) knows less: the
        # documented keys are there all the same, null when unknown.
        click.echo(json.dumps({**dict.fromkeys(SUCCEEDED_KEYS), "event": "succeeded", **result}))


class _BarProgress:
    """A one-line progress bar on a terminal; plain step lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.step = ""
        self.started_at = time.monotonic()

    def started(self, answer: dict[str, Any]) -> None:
        image = answer.get("image", {})
        click.echo(f"updating {answer['device']} to {image.get('version')} "
                   f"({image.get('size')} bytes, signature verified)", err=True)  # fmt: skip

    def progress(self, data: dict[str, Any]) -> None:
        step, percent = data.get("step", ""), int(data.get("percent", 0))
        if self.tty and step == "uploading":
            bar = "#" * (percent // 4)
            click.echo(f"\r  uploading [{bar:<25}] {percent:3d} %", nl=False, err=True)
        elif step != self.step:
            if self.tty and self.step == "uploading":
                click.echo("", err=True)
            click.echo(f"  {step}", err=True)
        self.step = step

    def failed(self, data: dict[str, Any]) -> None:
        if self.tty and self.step == "uploading":
            click.echo("", err=True)

    def finish(self, result: dict[str, Any]) -> None:
        if self.tty and self.step == "uploading":
            click.echo("", err=True)
        click.echo(f"{result.get('message')} ({result.get('seconds')} s)")


# --- simulate --------------------------------------------------------------------------


@no_data_output("runs a simulated MCU in the foreground; it says where on stderr")
@firmware.command("simulate")
@click.option("--pty", "use_pty", is_flag=True, help="Serve on a pseudo-terminal (a UART).")
@click.option("--udp", "udp", callback=host_port_option, default=None, metavar="HOST:PORT",
              help="Serve SMP over UDP on HOST:PORT instead.")  # fmt: skip
@click.option("--link", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stable path of the pty (a symlink; default in the temp dir).")  # fmt: skip
@click.option("--key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Public key (PEM) MCUboot checks new images against at boot.")  # fmt: skip
@click.option("--version", "version", default="1.0.0", show_default=True,
              help="Version of the image the MCU starts with.")  # fmt: skip
@click.option("--buf-size", type=click.IntRange(128, 8192), default=512, show_default=True,
              help="The SMP buffer size the MCU reports (mcumgr's buf_size).")  # fmt: skip
@click.option("--baud", type=click.IntRange(min=0), default=0, show_default=True,
              help="Emulated UART line rate on the pty (0: as fast as the pty goes).")  # fmt: skip
@click.option(
    "--drop", type=click.FloatRange(0, 1), default=0.0, help="Drop this share of requests."
)
@click.option("--garble", type=click.FloatRange(0, 1), default=0.0,
              help="Corrupt this share of answer lines.")  # fmt: skip
@click.option("--noise", type=click.FloatRange(0, 1), default=0.0,
              help="Console log lines among the SMP lines (probability per line).")  # fmt: skip
@click.option("--reboot-at", type=click.FloatRange(0, 1), default=None,
              help="Reboot once at this fraction of an upload (its state is lost).")  # fmt: skip
@click.option("--disconnect-at", type=click.FloatRange(0, 1), default=None,
              help="Vanish once when an upload reaches this fraction (state kept).")  # fmt: skip
@click.option("--vanish-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="How long --disconnect-at keeps it gone, in seconds.")  # fmt: skip
@click.option("--never-confirm", is_flag=True,
              help="New images never confirm; their watchdog resets them.")  # fmt: skip
@click.option("--reenumerate", is_flag=True,
              help="The pty vanishes and returns on every reset, like USB CDC-ACM.")  # fmt: skip
@click.option("--boot-s", type=click.FloatRange(0), default=0.2, show_default=True,
              help="Seconds a reset takes before the MCU answers again.")  # fmt: skip
@click.option("--seed", type=int, default=None, help="Seed for the fault dice.")
def firmware_simulate(
    use_pty: bool, udp: str | None, link: Path | None, key: Path | None, version: str,
    buf_size: int, baud: int, drop: float, garble: float, noise: float, reboot_at: float | None,
    disconnect_at: float | None, vanish_s: float, never_confirm: bool, reenumerate: bool,
    boot_s: float, seed: int | None,
) -> None:  # fmt: skip
    """Run a simulated MCU until interrupted.

    An SMP server with MCUboot's two image slots, on a pseudo-terminal (--pty, like a
    UART) or on UDP (--udp); it prints the [[firmware.devices]] entry that reaches it. The
    fault options make it drop, garble, reboot or vanish, to test the bridge against.

    \b
    Examples:
      lattice-edge firmware simulate --pty
      lattice-edge firmware simulate --udp 127.0.0.1:1337 --drop 0.1 --seed 7
    """
    if use_pty == (udp is not None):
        raise click.UsageError("choose one of --pty or --udp HOST:PORT")
    from firmware_bridge import require

    require("simulator")
    from firmware_bridge.simulator import Faults, PtyServer, SimulatedMCU, UdpServer

    setup_logging("info")
    loaded_key = None
    if key is not None:
        from agent.errors import ConfigError
        from firmware_bridge.image import load_trusted_keys

        try:
            loaded_key = load_trusted_keys((key,))[0].key
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--key") from exc
    mcu = SimulatedMCU(version=version, buf_size=buf_size, key=loaded_key,
                       never_confirm=never_confirm)  # fmt: skip
    faults = Faults(drop=drop, garble=garble, noise=noise, reboot_at=reboot_at,
                    disconnect_at=disconnect_at, vanish_s=vanish_s, reenumerate=reenumerate,
                    boot_s=boot_s)  # fmt: skip
    announced: list[str] = []

    def announce(where: str, entry: str) -> None:
        if announced:
            return
        announced.append(where)
        click.echo(f"simulated MCU ({version}) on {where}; in agent.toml:\n\n"
                   f"[[firmware.devices]]\nname = \"sim0\"\n{entry}\n", err=True)  # fmt: skip

    async def run() -> None:
        if udp is not None:
            host, _, port = udp.rpartition(":")
            server = UdpServer(mcu, faults, seed=seed)
            await server.serve(host.strip("[]"), int(port), on_ready=lambda w: announce(
                w, f'transport = "udp"\naddress = "{w}"'))  # fmt: skip
            return
        path = link or Path(tempfile.gettempdir()) / "lattice-edge-sim" / "ttyMCU0"
        path.parent.mkdir(parents=True, exist_ok=True)
        pty = PtyServer(mcu, faults, path, baud=baud, seed=seed, on_ready=lambda tty: announce(
            f"{path} -> {tty}", f'port = "{path}"'))  # fmt: skip
        await pty.run()

    asyncio.run(run())
