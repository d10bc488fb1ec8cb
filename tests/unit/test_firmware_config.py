"""``[firmware]`` and ``[[firmware.devices]]``: defaults, validation, errors naming key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import HostPort, load_config
from agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_no_firmware_section_means_no_devices(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[host]\nname = 'e'\n"), env={})
    assert config.firmware.devices == ()
    assert config.firmware.telemetry_period_s is None


def test_devices_and_keys(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[firmware]
trusted_keys = ["keys/mcuboot.pub.pem"]
telemetry_period_s = 10
health_window_s = 2.5

[[firmware.devices]]
name = "nrf52"
port = "/dev/serial/by-id/usb-ZEPHYR-if00"
baud = 1000000
stat_groups = ["smp_svr_stats"]

[[firmware.devices]]
name = "esp32"
transport = "udp"
address = "192.0.2.10:1337"
timeout_s = 3
""",
        ),
        env={"LATTICE_EDGE_FIRMWARE_RETURN_TIMEOUT_S": "90"},
    )
    fw = config.firmware
    assert fw.trusted_keys == (tmp_path.resolve() / "keys/mcuboot.pub.pem",)
    assert (fw.telemetry_period_s, fw.health_window_s, fw.return_timeout_s) == (10.0, 2.5, 90.0)
    serial, udp = fw.devices
    assert (serial.transport, serial.port, serial.baud, serial.stat_groups) == (
        "serial", "/dev/serial/by-id/usb-ZEPHYR-if00", 1000000, ("smp_svr_stats",)
    )  # fmt: skip
    assert (serial.timeout_s, udp.timeout_s) == (1.5, 3.0)
    assert (udp.transport, udp.address, udp.stat_groups) == (
        "udp",
        HostPort("192.0.2.10", 1337),
        None,
    )


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("[[firmware.devices]]\nport = '/dev/x'\n", "firmware.devices[0].name", "needs a name"),
        ("[[firmware.devices]]\nname = 'a'\n", "firmware.devices[0].port", "needs port"),
        ("[[firmware.devices]]\nname = 'a'\nport = 'ttyACM0'\n", "firmware.devices[0].port",
         "absolute"),
        ("[[firmware.devices]]\nname = 'a'\ntransport = 'udp'\n", "firmware.devices[0].address",
         "needs address"),
        ("[[firmware.devices]]\nname = 'a'\ntransport = 'ble'\nport = '/d'\n",
         "firmware.devices[0].transport", "'serial' or 'udp'"),
        ("[[firmware.devices]]\nname = 'a'\nport = '/d'\nbaud = 'fast'\n",
         "firmware.devices[0].baud", "baud rate"),
        ("[[firmware.devices]]\nname = 'a.b'\nport = '/d'\n", "firmware.devices[0].name",
         "letters"),
        ("[[firmware.devices]]\nname = 'a'\nport = '/d'\nstat_groups = ['x y']\n",
         "firmware.devices[0].stat_groups", "'x y'"),
        ("[[firmware.devices]]\nname = 'a'\nport = '/d'\n[[firmware.devices]]\nname = 'a'\n"
         "port = '/e'\n", "firmware.devices[1].name", "used twice"),
        ("[[firmware.devices]]\nname = 'a'\nport = '/d'\nparity = 'odd'\n",
         "firmware.devices[0].parity", "unknown key"),
        ("[firmware]\ntelemetry_period_s = -1\n", "firmware.telemetry_period_s", "positive"),
        ("[firmware]\ndevices = 3\n", "firmware.devices", "array of tables"),
    ],
)  # fmt: skip
def test_bad_values_name_key_and_file(tmp_path: Path, body: str, key: str, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path, env={})
    assert caught.value.key == key
    assert str(path) in str(caught.value)


def test_the_agent_does_not_import_the_bridge_without_devices() -> None:
    """Importing the CLI and the host (what ``run`` loads) must not pull in the bridge's
    dependencies: smp/pydantic, imgtool, pyserial, cbor2."""
    probe = (
        "import sys, agent.cli, agent.host, agent.cli.firmware\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'smp', 'pydantic', 'pydantic_core', 'imgtool', 'serial', 'serial_asyncio_fast', "
        "'cbor2', 'firmware_bridge'})\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import firmware_bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cbor2" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"needs the 'firmware' extra \(cbor2 missing\)"
    ) as caught:
        firmware_bridge.require("bridge")
    assert caught.value.key == "firmware.devices"
    monkeypatch.undo()
    firmware_bridge.require("bridge")
    firmware_bridge.require("simulator")
