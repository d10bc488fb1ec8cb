"""Shared fixtures: the third-party actor folder, nats-server, free ports, an operator-mode
hub standing in for NGS, and a runner for real ``lattice-edge`` agent processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lattice_testing import AgentProcess, Hub, NatsServerProcess, free_port, start_nats_server

from agent.leaf.binary import NatsServer, find_nats_server

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="run the long variants (fuzzing at 100k messages) instead of the CI sizes",
    )


@pytest.fixture(scope="session", autouse=True)
def private_agent_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Agents of this test run leave their running-agent pointers in a directory of the
    run's own (agent.running.index_dir), so a command without --config never finds an
    agent of another test run on the same machine."""
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("xdg-runtime"))
    yield
    if previous is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = previous


@pytest.fixture(scope="session")
def slow(request: pytest.FixtureRequest) -> bool:
    """Whether ``--slow`` was given: tests scale their volume with it."""
    return bool(request.config.getoption("--slow"))


@pytest.fixture(scope="session")
def third_party_dir() -> Path:
    """The read-only folder of third-party actors (``../shared/fixtures/third_party``).

    Skips when it is missing, unless ``LATTICE_EDGE_REQUIRE_FIXTURES=1`` (CI), where a
    missing folder fails the test instead of hiding it.
    """
    base = os.environ.get("LATTICE_EDGE_FIXTURES")
    root = Path(base) if base else REPO.parent / "shared" / "fixtures"
    folder = root / "third_party" if (root / "third_party").is_dir() else root
    if not (folder / "README.md").is_file():
        message = f"third-party fixtures not found at {folder}"
        if os.environ.get("LATTICE_EDGE_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def nats_server() -> NatsServer:
    """The nats-server the agent itself would use."""
    return find_nats_server()


@pytest.fixture
def hub(tmp_path: Path, nats_server: NatsServer) -> Iterator[Hub]:
    """A hub in operator mode (operator, SYS and APP accounts, memory resolver)."""
    with Hub(tmp_path / "hub", nats_server.path) as running:
        yield running


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[type[AgentProcess]]:
    """Starts ``lattice-edge`` processes and makes sure none outlives the test."""
    started: list[AgentProcess] = []

    class Tracked(AgentProcess):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for process in started:
        process.kill_all()


@pytest.fixture
def ports() -> dict[str, int]:
    """A fresh client and monitoring port for one agent."""
    return {"client": free_port(), "monitor": free_port()}


@pytest.fixture(scope="module")
def jetstream_server(
    tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer
) -> Iterator[NatsServerProcess]:
    """A JetStream-enabled nats-server on a free loopback port, shared by one test module
    (tests isolate themselves with their own buckets and subjects)."""
    with start_nats_server(tmp_path_factory.mktemp("nats"), nats_server.path) as server:
        yield server


@pytest.fixture
def fleet_hub(tmp_path: Path, nats_server: NatsServer) -> Iterator[Any]:
    """A hub whose account resolver takes JWT updates, for fleet tests (fleet_testing.py)."""
    from fleet_testing import FleetHub

    with FleetHub(tmp_path / "hub", nats_server.path) as running:
        yield running


@pytest.fixture
def serves() -> Iterator[list[Any]]:
    """The ``fleet serve`` processes a test starts (fleet_testing.serve); stopped after it."""
    started: list[Any] = []
    yield started
    for process in started:
        process.stop()
