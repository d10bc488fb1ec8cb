"""The host's own keys: the server key (``N…``, its lattice identity) and the cluster key
(``C…``, which signs the invocations it sends), kept as 0600 seed files in ``keys/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.errors import KeyFileError
from agent.identity.keys import KeyKind, KeyPair, generate, load_seed_file, write_seed_file

__all__ = ["HostKeys", "ensure_host_keys", "load_host_keys"]

HOST_SEED = "host.nk"
CLUSTER_SEED = "cluster.nk"


@dataclass(frozen=True, slots=True)
class HostKeys:
    """The two keys every host has."""

    server: KeyPair
    cluster: KeyPair

    @property
    def host_id(self) -> str:
        """The host's public key, its id on the lattice."""
        return self.server.public_key


def load_host_keys(keys_dir: Path) -> HostKeys:
    """Load both keys; the error says to run ``lattice-edge init`` when they are missing."""
    try:
        return HostKeys(
            server=load_seed_file(keys_dir / HOST_SEED, KeyKind.SERVER),
            cluster=load_seed_file(keys_dir / CLUSTER_SEED, KeyKind.CLUSTER),
        )
    except KeyFileError as exc:
        raise KeyFileError(f"{exc} (run 'lattice-edge init' to create the host keys)") from exc


def ensure_host_keys(keys_dir: Path) -> tuple[HostKeys, bool]:
    """Load the host keys, creating whichever is missing. Returns (keys, created any)."""
    created = False
    for name, kind in ((HOST_SEED, KeyKind.SERVER), (CLUSTER_SEED, KeyKind.CLUSTER)):
        path = keys_dir / name
        if not path.exists():
            write_seed_file(path, generate(kind))
            created = True
    return load_host_keys(keys_dir), created
