"""The upstream link over TLS, to a hub whose certificate a private CA signed."""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lattice_testing import AgentProcess, Hub, run_cli, wait_until
from test_leaf_upstream import init_device, receive_one

from agent.leaf.binary import NatsServer

pytestmark = pytest.mark.integration


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lattice-edge test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    directory.mkdir(parents=True, exist_ok=True)
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_leaf_link_over_tls(
    tmp_path: Path,
    nats_server: NatsServer,
    ports: dict[str, int],
    agent_factory: type[AgentProcess],
) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path / "pki")
    with Hub(tmp_path / "hub", nats_server.path, leaf_tls=(cert, key)) as hub:
        assert hub.leaf_url.startswith("tls://")
        config, data, _ = init_device(
            tmp_path, ports, hub.leaf_url, hub.leaf_creds, "--upstream-tls-ca", str(ca)
        )
        assert f'tls_ca_file = "{ca}"' in config.read_text()
        agent = agent_factory(config, data).start()
        agent.wait_ready()
        wait_until(lambda: hub.leaf_connections() >= 1, 20, "the TLS leaf link")
        device = await nats.connect(f"nats://127.0.0.1:{ports['client']}")
        cloud = await nats.connect(hub.client_url, user_credentials=str(hub.client_creds))
        try:
            assert await receive_one(cloud, device, "telemetry.tls", b"sealed") == b"sealed"
        finally:
            await device.close()
            await cloud.close()
        assert agent.terminate() == 0


def test_a_hub_signed_by_another_ca_is_refused(
    tmp_path: Path,
    nats_server: NatsServer,
    ports: dict[str, int],
    agent_factory: type[AgentProcess],
) -> None:
    _, cert, key = make_ca_and_server_cert(tmp_path / "hub-pki")
    other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other-pki")
    with Hub(tmp_path / "hub", nats_server.path, leaf_tls=(cert, key)) as hub:
        config, data, _ = init_device(
            tmp_path, ports, hub.leaf_url, hub.leaf_creds, "--upstream-tls-ca", str(other_ca)
        )
        agent = agent_factory(config, data).start()
        agent.wait_ready()
        time.sleep(3)
        assert hub.leaf_connections() == 0
        report = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
        assert report["leaf"]["up"] and report["upstream"]["connected"] is False
        assert "certificate" in agent.log().lower()  # nats-server says why, once
        assert agent.terminate() == 0


def test_init_refuses_a_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    result = run_cli(
        "init", "--config", str(tmp_path / "agent.toml"), "--data-dir", str(tmp_path / "d"),
        "--upstream", "tls://127.0.0.1:7422", "--upstream-tls-ca", str(junk),
    )  # fmt: skip
    assert result.returncode == 1 and "is not a PEM certificate" in result.stderr
    assert "Traceback" not in result.stderr
