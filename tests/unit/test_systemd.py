"""sd_notify messages reach a real unix datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from agent.systemd import Notifier


def test_notifier_sends_ready_stopping_and_watchdog(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000",
                             "WATCHDOG_PID": str(os.getpid())})  # fmt: skip
        assert notifier.enabled
        assert notifier.watchdog_interval == 5.0
        notifier.ready("serving")
        notifier.watchdog()
        notifier.stopping()
        messages = [server.recv(4096).decode() for _ in range(3)]
    assert messages == ["READY=1\nSTATUS=serving", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_is_silent_without_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")  # nothing to send to, nothing raised


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
        ).watchdog_interval
        is None
    )


def test_unreachable_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready("x")
    assert "cannot notify systemd" in caplog.text
