"""The agent on Debian bookworm's nats-server 2.9.10 (the only armhf build) as its leaf,
bridged to a 2.15 hub: the rendered config must be one that 2.9.10 accepts."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import pytest
from lattice_testing import AgentProcess, Hub, run_cli, wait_until
from test_leaf_upstream import init_device, receive_one

from agent.leaf.binary import find_nats_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def old_nats_server() -> Path:
    """Debian's nats-server 2.9.10, fetched by ``packaging/bootstrap.sh --test``."""
    named = os.environ.get("LATTICE_EDGE_TEST_NATS_SERVER_29")
    path = Path(named) if named else REPO / ".venv/nats-server-2.9/usr/sbin/nats-server"
    if not path.is_file():
        message = f"nats-server 2.9 not found at {path} (run packaging/bootstrap.sh --test)"
        if os.environ.get("LATTICE_EDGE_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    assert find_nats_server(path).version[:2] == (2, 9)
    return path


async def test_2_9_leaf_bridges_to_a_2_15_hub(
    tmp_path: Path,
    hub: Hub,
    ports: dict[str, int],
    old_nats_server: Path,
    agent_factory: type[AgentProcess],
) -> None:
    config, data, _ = init_device(tmp_path, ports, hub.leaf_url, hub.leaf_creds)
    text = config.read_text().replace(
        "[leaf]", f"[leaf]\nnats_server = '{old_nats_server}'\nsync_interval = '1m'"
    )
    config.write_text(text)
    agent = agent_factory(config, data).start()
    state = agent.wait_ready()
    assert state["nats_server_version"].startswith("2.9.")
    rendered = (data / "run" / "nats-server.conf").read_text()
    for refused in ("compression", "first_info_timeout", "sync_interval"):
        assert refused not in rendered
    assert "sync_interval is ignored" in agent.log()
    wait_until(lambda: hub.leaf_connections() >= 1, 20, "the 2.9 leaf link to the hub")

    device = await nats.connect(f"nats://127.0.0.1:{ports['client']}")
    cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
    try:
        assert await receive_one(cloud, device, "telemetry.old", b"2.9") == b"2.9"
        assert await receive_one(device, cloud, "commands.old", b"hello") == b"hello"
    finally:
        await device.close()
        await cloud.close()
    status = run_cli("status", "--config", str(config), "--json")
    assert '"connected": true' in status.stdout
    assert agent.terminate() == 0
