"""The firmware bridge in this process on a real nats-server, against the MCU simulator on a
real pty (and UDP) in its own thread: endpoints, telemetry, signed OTA and its failures."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from firmware_testing import (
    HOST_ID,
    Harness,
    SigningKey,
    SimulatorThread,
    make_key,
    put_image,
    running_bridge,
    sign_image,
)
from lattice_testing import NatsServerProcess

from firmware_bridge.image import load_trusted_keys
from firmware_bridge.simulator import Faults, SimulatedMCU

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": make_key(directory, "ed", "ed25519"),
        "ecdsa-p256": make_key(directory, "ec", "ecdsa-p256"),
        "other": make_key(directory, "other", "ed25519"),
    }


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, SigningKey]
) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("images")
    return {
        "ed25519": sign_image(directory, keys["ed25519"], "1.1.0"),
        "ecdsa-p256": sign_image(directory, keys["ecdsa-p256"], "1.2.0", seed=2),
        "big": sign_image(directory, keys["ed25519"], "1.3.0", size=60_000, seed=3),
        "other": sign_image(directory, keys["other"], "6.6.6", seed=4),
        "unsigned": sign_image(directory, None, "1.1.0", seed=5),
    }


def mcu_for(key: SigningKey, **options: Any) -> SimulatedMCU:
    """A simulated MCU whose MCUboot checks images against ``key``."""
    return SimulatedMCU(key=load_trusted_keys((key.public,))[0].key, **options)


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ttyMCU0"


async def update(harness: Harness, image: Path, *, confirm: bool = True) -> dict[str, Any]:
    """Start an update from the object store and wait for its end; the final event's data."""
    ref = await put_image(harness.nats, image)
    answer, _ = await harness.call("mcu0", "update", {"image": ref, "confirm": confirm})
    assert answer.get("accepted"), answer
    event = await harness.finished(answer["update_id"])
    data: dict[str, Any] = event["data"]
    data["kind"] = event["type"].rsplit("_", 1)[-1]
    return data


async def online(harness: Harness, timeout: float = 10.0) -> None:
    device = harness.bridge.devices["mcu0"]
    assert await device.wait_online(timeout), f"device is {device.state}: {device.reason}"


async def test_info_echo_stats_reset_and_telemetry_over_a_pty(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    mcu = mcu_for(keys["ed25519"])
    with SimulatorThread(mcu, Faults(), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path) as harness:
            await online(harness)
            info, _ = await harness.call("mcu0", "info")
            assert info["state"] == "online" and info["mcumgr"] == {"buf_size": 512, "buf_count": 4}
            assert info["app_info"].startswith("Zephyr lattice-edge-sim 1.0.0")
            (slot,) = info["images"]
            assert slot["version"] == "1.0.0" and slot["active"] and slot["confirmed"]
            assert slot["hash"] == mcu.primary.image_hash.hex()
            assert info["stat_groups"] == ["sim", "smp"]

            echo, _ = await harness.call("mcu0", "echo", {"text": "ping ünïcode"})
            assert echo == {"text": "ping ünïcode"}
            stats, _ = await harness.call("mcu0", "stats", {"group": "sim"})
            assert set(stats["groups"]["sim"]) == {"uptime_s", "ticks", "temperature_mc", "boots"}

            await asyncio.sleep(1.5)  # three telemetry periods
            subjects = {subject for subject, _ in harness.telemetry}
            assert f"lattice-edge.telemetry.{HOST_ID}.mcu0.sim" in subjects
            assert f"lattice-edge.telemetry.{HOST_ID}.mcu0.smp" in subjects
            sims = [t for s, t in harness.telemetry if s.endswith(".sim")]
            assert sims[0]["device"] == "mcu0" and sims[0]["group"] == "sim"
            assert isinstance(sims[0]["ts"], float)
            assert len({t["fields"]["ticks"] for t in sims}) > 1  # the values change

            boots = mcu.boots
            reset, _ = await harness.call("mcu0", "reset")
            assert reset == {"device": "mcu0", "reset": True}
            await asyncio.sleep(0.5)
            await online(harness)
            assert mcu.boots == boots + 1

            missing, headers = await harness.call("mcu0", "stats", {"group": "nope"})
            assert missing["code"] == 502 and "rc 5" in missing["error"]
            assert headers.get("Nats-Service-Error-Code") == "502"


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
async def test_signed_ota_ends_confirmed_on_the_new_version(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, kind: str,
    keys: dict[str, SigningKey], images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys[kind])
    trusted = (keys["other"].public, keys[kind].public)
    with SimulatorThread(mcu, Faults(), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=trusted) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images[kind])
            assert result["kind"] == "succeeded", result
            version = "1.1.0" if kind == "ed25519" else "1.2.0"
            assert result["version"] == version and result["confirmed"] is True
            assert mcu.primary.version == version and mcu.primary.confirmed
            assert mcu.secondary is not None and mcu.secondary.version == "1.0.0"  # for revert
            started = await harness.wait_event("started")
            assert started["data"]["trusted_key"] == keys[kind].public.name
            steps = [e["data"]["step"] for e in harness.events if e["type"].endswith("progress")]
            for step in ("uploading", "testing", "resetting", "boot_check", "health", "confirming"):
                assert step in steps
            # rate-limited: far fewer progress events than upload requests
            assert len(steps) < mcu.upload_requests
            info, _ = await harness.call("mcu0", "info")
            assert info["last_update"]["outcome"] == "succeeded"
            assert info["images"][0]["version"] == version
            # The image is in the module cache now: a sha256: reference needs no fetch.
            digest = hashlib.sha256(images[kind].read_bytes()).hexdigest()
            again, _ = await harness.call("mcu0", "update", {"image": f"sha256:{digest}"})
            repeat = await harness.finished(again["update_id"])
            assert repeat["type"].endswith("succeeded"), repeat
            assert repeat["data"]["message"] == f"already running {version}"


async def test_ota_over_udp(
    jetstream_server: NatsServerProcess, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["ed25519"])
    with SimulatorThread(mcu, Faults(drop=0.05, garble=0.05), udp=True) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            info, _ = await harness.call("mcu0", "info")
            assert info["transport"] == "udp" and info["images"][0]["version"] == "1.0.0"
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "succeeded", result
            assert mcu.primary.version == "1.1.0" and mcu.primary.confirmed
            assert harness.bridge.devices["mcu0"].session.stats.retransmits > 0


async def test_bad_images_are_refused_before_any_upload(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    signed = images["ed25519"].read_bytes()
    tampered = bytearray(signed)
    tampered[0x400] ^= 0x01
    (tmp_path / "tampered.bin").write_bytes(tampered)
    (tmp_path / "truncated.bin").write_bytes(signed[: len(signed) // 2])
    cases = {
        "unsigned": images["unsigned"],
        "tampered": tmp_path / "tampered.bin",
        "untrusted": images["other"],
        "truncated": tmp_path / "truncated.bin",
    }
    mcu = mcu_for(keys["ed25519"])
    with SimulatorThread(mcu, Faults(), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            for reason, path in cases.items():
                ref = await put_image(harness.nats, path)
                answer, headers = await harness.call("mcu0", "update", {"image": ref})
                assert answer["code"] == 422, answer
                assert headers["Nats-Service-Error-Code"] == "422"
                failed = await harness.wait_event(
                    "failed", outcome="refused", reason=answer["error"]
                )
                assert failed["data"]["step"] == "verify"
                assert answer["reason"] == reason, answer
            assert mcu.upload_requests == 0
            assert mcu.primary.version == "1.0.0"


async def test_interrupted_upload_resumes_from_the_device_offset(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    # The USB link drops at 50 % for longer than the bridge waits: the first update fails,
    # the MCU keeps its upload state, and the second update continues from its offset.
    mcu = mcu_for(keys["ed25519"])
    faults = Faults(disconnect_at=0.5, vanish_s=3.0)
    size = images["big"].stat().st_size
    with SimulatorThread(mcu, faults, link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,),
                                  return_timeout_s=1.0) as harness:  # fmt: skip
            await online(harness)
            first = await update(harness, images["big"])
            assert first["kind"] == "failed" and first["outcome"] == "failed", first
            assert "during the upload" in first["reason"] and "resume" in first["reason"]
            assert mcu.upload is not None
            held = len(mcu.upload.received)
            assert 0.45 * size <= held < size
            mcu.upload_offsets.clear()
            await online(harness, timeout=10)
            second = await update(harness, images["big"])
            assert second["kind"] == "succeeded", second
            assert second["resumed_from"] == held
            # the second update asked at offset 0 once, then continued from the device's offset
            assert mcu.upload_offsets[0] == 0 and mcu.upload_offsets[1] == held
            assert mcu.primary.version == "1.3.0"


async def test_a_short_disconnect_is_waited_out_within_one_update(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["ed25519"])
    with SimulatorThread(mcu, Faults(disconnect_at=0.5, vanish_s=0.5), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images["big"])
            assert result["kind"] == "succeeded", result
            assert result["resumed_from"] > 0
            assert harness.bridge.devices["mcu0"].link.stats.losses >= 1


async def test_a_never_confirming_image_is_reported_as_rolled_back(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["ed25519"], never_confirm=True, watchdog_s=30.0)
    with SimulatorThread(mcu, Faults(), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "failed" and result["outcome"] == "rolled_back", result
            assert "never confirmed" in result["reason"] and "1.0.0" in result["reason"]
            assert mcu.primary.version == "1.0.0" and mcu.primary.confirmed


async def test_an_image_whose_watchdog_fires_in_the_health_window_is_rolled_back(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["ed25519"], never_confirm=True, watchdog_s=0.3)
    with SimulatorThread(mcu, Faults(reenumerate=True), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,),
                                  health_window_s=3.0) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "failed" and result["outcome"] == "rolled_back", result
            assert mcu.primary.version == "1.0.0"


async def test_an_image_mcuboot_will_not_boot_is_rolled_back(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["other"])  # MCUboot holds another key than the one we trust
    with SimulatorThread(mcu, Faults(), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "failed" and result["outcome"] == "rolled_back", result
            assert result["step"] == "boot_check"


async def test_a_device_that_does_not_come_back_is_lost(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["ed25519"])
    with SimulatorThread(mcu, Faults(brick_on_reset=True), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,),
                                  return_timeout_s=2.0) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "failed" and result["outcome"] == "lost", result
            assert "did not come back within 2 s" in result["reason"]


async def test_garbled_dropped_frames_and_console_noise_are_survived(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    mcu = mcu_for(keys["ed25519"])
    with SimulatorThread(mcu, Faults(drop=0.08, garble=0.08, noise=0.5), link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device(timeout_s=0.3)], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "succeeded", result
            assert mcu.primary.version == "1.1.0"
            device = harness.bridge.devices["mcu0"]
            assert device.link.stats.garbled > 0
            assert device.link.stats.console_lines > 0
            assert device.session.stats.retransmits > 0


async def test_the_port_vanishing_and_returning_is_survived(
    jetstream_server: NatsServerProcess, pty: Path, tmp_path: Path, keys: dict[str, SigningKey],
    images: dict[str, Path],
) -> None:  # fmt: skip
    # Re-enumeration on every reset (USB CDC-ACM): the OTA's reset makes the port vanish.
    mcu = mcu_for(keys["ed25519"])
    faults = Faults(reenumerate=True, boot_s=1.0)
    with SimulatorThread(mcu, faults, link=pty) as sim:
        async with running_bridge(jetstream_server.url, [sim.device()], tmp_path,
                                  trusted_keys=(keys["ed25519"].public,)) as harness:  # fmt: skip
            await online(harness)
            device = harness.bridge.devices["mcu0"]
            await harness.call("mcu0", "reset")
            await asyncio.sleep(0.3)
            assert not pty.exists()
            gone, _ = await harness.call("mcu0", "echo", {"text": "x"})
            assert gone["code"] == 503
            await online(harness)
            assert device.link.stats.losses >= 1 and device.link.stats.connects >= 2
            result = await update(harness, images["ed25519"])
            assert result["kind"] == "succeeded", result
            assert mcu.primary.version == "1.1.0" and device.link.stats.losses >= 2
