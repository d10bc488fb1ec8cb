"""What the agent may and may not do inside lattice-edge.service, seen from inside.

test.sh runs this as an ``ExecStartPost=`` of the unit (same user, namespaces, seccomp
filter and device policy as the agent) and reads the one JSON line it prints to the
journal. Each check records what happened; ``violations`` lists every result that is not
what the unit promises. It never fails the unit: the test decides.

    python3 sandbox_probe.py [--emulated] [LEAF_PORT]

``--emulated``: the unit runs under qemu-user (a foreign architecture's test), which
applies neither seccomp filters nor cgroup BPF programs, so what only those enforce (no
W+X memory, no chown, no packet or Bluetooth sockets; the device policy) is reported but
not expected.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import mmap
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path("/var/lib/lattice-edge")
# Device nodes test.sh creates before the probe runs, all root:dialout 0660 but the
# last two. An open that reaches the driver (ok, or ENXIO/ENODEV/EIO when no hardware is
# behind the node) got past file permissions and the device policy; EPERM is the device
# policy, EACCES the file permissions.
SERIAL_NODES = {
    "/dev/ttyUSB0": "ttyUSB",
    "/dev/ttyACM0": "ttyACM",
    "/dev/ttyAMA0": "ttyAMA",
    "/dev/ttyS0": "ttyS",
}
REACHED = ("ok", "ENXIO", "ENODEV", "EIO")
NOT_DIALOUT_NODE = "/dev/lattice-edge-probe-ttyS1"  # root:root 0660, a serial major
CONSOLE_NODE = "/dev/lattice-edge-probe-tty1"  # root:tty 0620, major 4 like ttyS
BLOCK_NODE = "/dev/lattice-edge-probe-block"  # mode 0666: only the device policy stops it


def outcome(action: Callable[[], object]) -> str:
    """'ok' or the errno name the action failed with."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def write_to(directory: str) -> Callable[[], None]:
    def action() -> None:
        path = Path(directory, f".lattice-edge-probe-{os.getpid()}")
        path.write_text("probe")
        path.unlink()

    return action


def open_device(path: str) -> Callable[[], None]:
    return lambda: os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))


def make_socket(family: int, kind: int = socket.SOCK_STREAM) -> Callable[[], None]:
    return lambda: socket.socket(family, kind).close()


def connect_leaf(port: int) -> Callable[[], None]:
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close()


def writable_executable_memory() -> None:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()


def worker_like_child() -> None:
    """What a sandbox worker's start does: fork/exec, RLIMIT_AS, PR_SET_PDEATHSIG."""
    code = (
        "import ctypes, resource, signal;"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "assert ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def status_fields() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("NoNewPrivs", "Seccomp", "CapEff", "CapBnd", "CapAmb"):
            fields[key] = value.strip()
    return fields


def registered_char_majors() -> set[str]:
    """Names of the character device drivers the kernel has registered."""
    names: set[str] = set()
    for line in Path("/proc/devices").read_text().split("Block devices:")[0].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            names.add(parts[1])
    return names


def other_users_processes() -> int:
    me = os.getuid()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError):  # exited meanwhile
                count += entry.stat().st_uid != me
    return count


def main(argv: list[str]) -> int:
    try:
        results = probe(argv)
    except Exception as exc:  # the probe must never fail the unit; the test reads this
        results = {"violations": [f"the probe itself failed: {exc!r}"]}
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    print("lattice-edge-sandbox-probe: " + json.dumps(results, sort_keys=True), flush=True)
    return 0


SECCOMP_ONLY = ("wx_memory", "chown", "packet", "bluetooth")


def probe(argv: list[str]) -> dict[str, object]:
    emulated = "--emulated" in argv
    ports = [arg for arg in argv if not arg.startswith("--")]
    leaf_port = int(ports[0]) if ports else 4222
    registered = registered_char_majors()
    results: dict[str, object] = {
        "uid_is_root": os.getuid() == 0,
        # PrivateUsers=yes maps every group but the service's own to 65534 in here, so
        # dialout shows up as that; the serial opens below show it still counts.
        "groups": sorted(os.getgroups()),
        "dialout_gid": grp.getgrnam("dialout").gr_gid,
        "status": status_fields(),
        "write_etc": outcome(write_to("/etc")),
        "write_usr": outcome(write_to("/usr/lib/lattice-edge")),
        "write_data_dir": outcome(write_to(str(DATA_DIR))),
        "write_tmp": outcome(write_to("/tmp")),
        "list_home": outcome(lambda: os.listdir("/home")),
        "list_root_home": outcome(lambda: os.listdir("/root")),
        "serial": {node: outcome(open_device(node)) for node in SERIAL_NODES},
        "serial_driver_registered": sorted(d for d in SERIAL_NODES.values() if d in registered),
        "serial_not_dialout": outcome(open_device(NOT_DIALOUT_NODE)),
        "console": outcome(open_device(CONSOLE_NODE)),
        "block_device": outcome(open_device(BLOCK_NODE)),
        # systemd enforces DevicePolicy with a cgroup v2 BPF program.
        "cgroup_v2": Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        "inet": outcome(make_socket(socket.AF_INET)),
        "inet6": outcome(make_socket(socket.AF_INET6)),
        "unix": outcome(make_socket(socket.AF_UNIX)),
        "netlink": outcome(make_socket(socket.AF_NETLINK, socket.SOCK_RAW)),
        "bluetooth": outcome(make_socket(getattr(socket, "AF_BLUETOOTH", 31), socket.SOCK_RAW)),
        "packet": outcome(make_socket(socket.AF_PACKET, socket.SOCK_RAW)),
        "connect_leaf": outcome(connect_leaf(leaf_port)),
        "wx_memory": outcome(writable_executable_memory),
        "worker_child": outcome(worker_like_child),
        "lower_rlimit_as": outcome(
            lambda: resource.setrlimit(resource.RLIMIT_AS, resource.getrlimit(resource.RLIMIT_AS))
        ),
        "chown": outcome(lambda: os.chown(DATA_DIR, -1, -1)),
        "kill_pid_1": outcome(lambda: os.kill(1, 0)),
        "other_users_processes": other_users_processes(),
    }
    expected: dict[str, object] = {
        "uid_is_root": False,
        "serial_not_dialout": "EACCES",
        "console": "EACCES",
        "write_etc": "EROFS",
        "write_usr": "EROFS",
        "write_data_dir": "ok",
        "write_tmp": "ok",
        "inet": "ok",
        "inet6": "ok",
        "unix": "ok",
        "netlink": "ok",
        "packet": "EAFNOSUPPORT",
        "bluetooth": "EAFNOSUPPORT",
        "connect_leaf": "ok",
        "wx_memory": "EPERM",
        "worker_child": "ok",
        "lower_rlimit_as": "ok",
        "chown": "EPERM",
        "other_users_processes": 0,
    }
    if emulated:
        for key in SECCOMP_ONLY:
            del expected[key]
    results["emulated"] = emulated
    violations = [
        f"{key}: {results[key]!r}, expected {value!r}"
        for key, value in expected.items()
        if results[key] != value
    ]
    status = results["status"]
    assert isinstance(status, dict)
    if status.get("NoNewPrivs") != "1":
        violations.append(f"NoNewPrivs is {status.get('NoNewPrivs')}")
    if status.get("CapEff") != "0000000000000000" or status.get("CapBnd") != "0000000000000000":
        violations.append(f"capabilities left: {status}")
    # ProtectHome=yes: /home and /root are empty and inaccessible.
    for key in ("list_home", "list_root_home"):
        if results[key] not in ("EACCES", "ENOENT", "EPERM"):
            violations.append(f"{key}: {results[key]}")
    serial = results["serial"]
    assert isinstance(serial, dict)
    # A serial major the kernel has registered must be reachable; one it has not (its
    # driver is not loaded here) cannot be in the device policy, so EPERM is right.
    for node, driver in SERIAL_NODES.items():
        wanted = REACHED if driver in registered or emulated else ("EPERM",)
        if serial[node] not in wanted:
            violations.append(
                f"serial {node} ({driver} registered: {driver in registered}): {serial[node]}"
            )
    if results["cgroup_v2"] and not emulated and results["block_device"] != "EPERM":
        violations.append(f"block device opened: {results['block_device']} (DevicePolicy)")
    if not any(driver in registered for driver in SERIAL_NODES.values()):
        violations.append("no serial driver registered: nothing shows serial access")
    results["violations"] = violations
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
