"""TLS material for the upstream link: checked before nats-server is asked to use it."""

from __future__ import annotations

from pathlib import Path

from agent.errors import IdentityError

__all__ = ["check_pem_certificate"]


def check_pem_certificate(path: Path) -> None:
    """Fail with a clear error unless ``path`` holds a PEM X.509 certificate."""
    from cryptography import x509  # only TLS set-ups pay for the import

    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM certificate: {exc}") from exc
