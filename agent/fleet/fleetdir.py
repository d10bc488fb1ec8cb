"""The fleet directory: ``fleet.toml`` and the seeds ``fleet init`` makes.

Layout (the directory is 0700, seeds and the hub creds 0600, all written atomically)::

    fleet.toml              what the service and the CLI read (documented in docs/fleet.md)
    device-signing.nk       scoped signing key of the role lattice-edge-device   (SA…)
    bootstrap-signing.nk    scoped signing key of the role lattice-edge-bootstrap (SA…)
    admin.nk                the key that signs admin requests to the service     (SU…)
    hub.creds               the fleet service's own credentials on the hub (a copy)

``fleet.toml`` is written last, so an interrupted ``init`` leaves no fleet behind and can
simply be run again; once it exists, ``init`` refuses to touch the directory, because new
signing keys would orphan every enrolled device.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import FleetDirError, IdentityError, KeyFileError
from agent.fleet import subjects, templates
from agent.fleet.duration import format_duration, parse_duration
from agent.fsutil import write_atomic, write_secret
from agent.identity import jwt
from agent.identity.keys import (
    KeyKind,
    KeyPair,
    generate,
    is_public_key,
    load_seed_file,
    write_seed_file,
)

__all__ = [
    "FLEET_DIR_ENV",
    "FleetDir",
    "FleetInit",
    "FleetInitResult",
    "default_fleet_dir",
    "init_fleet",
    "load_fleet",
    "resign_account_file",
]

FLEET_DIR_ENV = "LATTICE_EDGE_FLEET_DIR"
FLEET_TOML = "fleet.toml"
DEVICE_SEED = "device-signing.nk"
BOOTSTRAP_SEED = "bootstrap-signing.nk"
ADMIN_SEED = "admin.nk"
HUB_CREDS = "hub.creds"
DEFAULT_TTL_S = 7 * 86400
MIN_TTL_S = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HUB_URL = re.compile(r"^(nats|tls|ws|wss)://[^\s/]+$")
_LEAF_URL = re.compile(r"^(nats-leaf|nats|tls|ws|wss)://[^\s/]+(/[^\s]*)?$")


def default_fleet_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$LATTICE_EDGE_FLEET_DIR``, else ``fleet/`` in the user's Lattice Edge config dir."""
    from agent.config import default_config_path

    environ = os.environ if env is None else env
    named = environ.get(FLEET_DIR_ENV)
    return Path(named) if named else default_config_path().parent / "fleet"


@dataclass(frozen=True, slots=True)
class FleetDir:
    """A loaded fleet directory. Seeds are read when asked for, never kept in the object."""

    path: Path
    fleet_id: str
    account: str
    lattice: str
    hub_urls: tuple[str, ...]
    leaf_urls: tuple[str, ...]
    js_domain: str
    credential_ttl_s: int
    trusted_issuers: tuple[str, ...]
    cluster_issuers: tuple[str, ...]
    device_key: str
    bootstrap_key: str
    admin_key: str
    rollout: Mapping[str, int] = field(default_factory=dict)

    @property
    def creds(self) -> Path:
        """The fleet service's credentials on the hub."""
        return self.path / HUB_CREDS

    def device_signer(self) -> KeyPair:
        """The scoped key that signs device JWTs."""
        return self._seed(DEVICE_SEED, self.device_key)

    def bootstrap_signer(self) -> KeyPair:
        """The scoped key that signs the bootstrap JWT."""
        return self._seed(BOOTSTRAP_SEED, self.bootstrap_key)

    def admin_signer(self) -> KeyPair:
        """The key that signs admin requests."""
        return self._seed(ADMIN_SEED, self.admin_key)

    def _seed(self, name: str, expected: str) -> KeyPair:
        try:
            key = load_seed_file(self.path / name)
        except KeyFileError as exc:
            raise FleetDirError(str(exc)) from exc
        if key.public_key != expected:
            raise FleetDirError(f"{self.path / name} does not hold the key {expected}")
        return key

    @property
    def signing_keys(self) -> list[dict[str, Any]]:
        """The two ``signing_keys`` entries the account JWT must carry."""
        return signing_key_entries(
            self.fleet_id, self.lattice, self.js_domain, self.device_key, self.bootstrap_key
        )


def signing_key_entries(
    fleet_id: str, lattice: str, js_domain: str, device_key: str, bootstrap_key: str
) -> list[dict[str, Any]]:
    """The account JWT's scoped signing key entries for one fleet."""
    return [
        jwt.user_scope(
            device_key,
            templates.DEVICE_ROLE,
            templates.device_template(lattice=lattice, fleet=fleet_id, js_domain=js_domain),
        ),
        jwt.user_scope(
            bootstrap_key, templates.BOOTSTRAP_ROLE, templates.bootstrap_template(fleet=fleet_id)
        ),
    ]


# --- reading fleet.toml ---------------------------------------------------------------------


def _reader(table: Mapping[str, Any], section: str, source: Path) -> Callable[..., Any]:
    def get(key: str, check: Callable[[Any], Any], default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise FleetDirError(f"{source}: key '{section}.{key}' is missing")
            return default
        try:
            return check(table[key])
        except (TypeError, ValueError) as exc:
            raise FleetDirError(f"{source}: key '{section}.{key}': {exc}") from exc

    return get


def _text(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return check


def _key_of(kind: KeyKind) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not is_public_key(value, kind):
            raise ValueError(f"{value!r} is not a public {kind.name.lower()} key")
        return value

    return check


def _list_of(check: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check_list(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise TypeError("must be a list")
        return tuple(check(item) for item in value)

    return check_list


def _duration(value: Any) -> int:
    return parse_duration(value)


def load_fleet(path: Path) -> FleetDir:
    """Load and check ``path/fleet.toml``; every error names the file and the key."""
    source = path / FLEET_TOML
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FleetDirError(
            f"{path} holds no fleet (no {FLEET_TOML}); run 'lattice-edge fleet init --dir {path}'"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetDirError(f"{source}: not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetDirError(f"cannot read {source}: {exc}") from exc
    unknown = sorted(set(raw) - {"fleet", "keys", "rollout"})
    if unknown:
        raise FleetDirError(f"{source}: unknown section '{unknown[0]}'")
    fleet, keys = raw.get("fleet"), raw.get("keys")
    rollout = raw.get("rollout", {})
    if not isinstance(fleet, dict) or not isinstance(keys, dict) or not isinstance(rollout, dict):
        raise FleetDirError(f"{source}: needs the tables [fleet] and [keys]")
    f = _reader(fleet, "fleet", source)
    k = _reader(keys, "keys", source)
    r = _reader(rollout, "rollout", source)
    known = {"id", "account", "lattice", "hub_urls", "leaf_urls", "js_domain",
             "credential_ttl", "trusted_issuers", "cluster_issuers"}  # fmt: skip
    for table, name, allowed in (
        (fleet, "fleet", known),
        (keys, "keys", {"device", "bootstrap", "admin"}),
        (rollout, "rollout", {"lease", "retry_max"}),
    ):
        extra = sorted(set(table) - allowed)
        if extra:
            raise FleetDirError(f"{source}: unknown key '{name}.{extra[0]}'")
    fleet_id = f("id", _text(re.compile(r"^[A-Z2-7]{12}$"), "a fleet id"))
    device_key = k("device", _key_of(KeyKind.ACCOUNT))
    if device_key[1:13] != fleet_id:
        raise FleetDirError(f"{source}: 'fleet.id' does not belong to 'keys.device'")
    return FleetDir(
        path=path,
        fleet_id=fleet_id,
        account=f("account", _key_of(KeyKind.ACCOUNT)),
        lattice=f("lattice", _text(_NAME, "a lattice name")),
        hub_urls=f("hub_urls", _list_of(_text(_HUB_URL, "a nats:// or tls:// URL"))),
        leaf_urls=f("leaf_urls", _list_of(_text(_LEAF_URL, "a leafnode URL"))),
        js_domain=f("js_domain", _text(_NAME, "a JetStream domain")),
        credential_ttl_s=f("credential_ttl", _duration, DEFAULT_TTL_S),
        trusted_issuers=f("trusted_issuers", _list_of(_key_of(KeyKind.ACCOUNT)), ()),
        cluster_issuers=f("cluster_issuers", _list_of(_key_of(KeyKind.CLUSTER)), ()),
        device_key=device_key,
        bootstrap_key=k("bootstrap", _key_of(KeyKind.ACCOUNT)),
        admin_key=k("admin", _key_of(KeyKind.USER)),
        rollout={
            "lease_s": r("lease", _duration, 30),
            "retry_max_s": r("retry_max", _duration, 300),
        },
    )


# --- init -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetInit:
    """The answers ``fleet init`` was given."""

    path: Path
    hub_urls: tuple[str, ...]
    creds: Path
    account: str
    leaf_urls: tuple[str, ...]
    js_domain: str
    lattice: str = "default"
    credential_ttl_s: int = DEFAULT_TTL_S
    trusted_issuers: tuple[str, ...] = ()
    cluster_issuers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetInitResult:
    """What ``fleet init`` made: the entries the account JWT must carry, and how."""

    fleet: FleetDir
    signing_keys: list[dict[str, Any]]
    nsc_commands: list[str]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` output."""
        return {
            "account": self.fleet.account,
            "signing_keys": self.signing_keys,
            "fleet": self.fleet.fleet_id,
            "dir": str(self.fleet.path),
            "nsc_commands": self.nsc_commands,
        }


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _check_init(request: FleetInit) -> jwt.Creds:
    if not is_public_key(request.account, KeyKind.ACCOUNT):
        raise FleetDirError(f"'{request.account}' is not a public account key (A…)")
    if not _NAME.match(request.lattice):
        raise FleetDirError(f"'{request.lattice}' is not a lattice name")
    if not _NAME.match(request.js_domain):
        raise FleetDirError(f"'{request.js_domain}' is not a JetStream domain name")
    if not request.hub_urls or not request.leaf_urls:
        raise FleetDirError("a fleet needs at least one --hub URL and one --leaf-url")
    for url in request.hub_urls:
        if not _HUB_URL.match(url):
            raise FleetDirError(f"--hub '{url}' must be a nats://, tls://, ws:// or wss:// URL")
    for url in request.leaf_urls:
        if not _LEAF_URL.match(url):
            raise FleetDirError(
                f"--leaf-url '{url}' must be a nats-leaf://, tls:// or ws(s):// URL"
            )
    if request.credential_ttl_s < MIN_TTL_S:
        raise FleetDirError(f"--credential-ttl must be at least {MIN_TTL_S}s")
    creds = jwt.read_creds(request.creds)
    claims = jwt.decode(creds.jwt).claims
    nats_claims = claims.get("nats")
    owner = (nats_claims.get("issuer_account") if isinstance(nats_claims, dict) else None) or (
        claims.get("iss")
    )
    if owner != request.account:
        raise FleetDirError(
            f"{request.creds} is a user of account {owner}, not of --account {request.account}"
        )
    return creds


def init_fleet(request: FleetInit) -> FleetInitResult:
    """Make a fleet directory; see the module docstring for what goes in it."""
    creds = _check_init(request)
    path = request.path.expanduser().resolve()
    if (path / FLEET_TOML).exists():
        raise FleetDirError(
            f"{path} already holds a fleet; new signing keys would orphan its devices "
            "(use another --dir for another fleet)"
        )
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    device, bootstrap, admin = (
        generate(KeyKind.ACCOUNT), generate(KeyKind.ACCOUNT), generate(KeyKind.USER)
    )  # fmt: skip
    for name, key in ((DEVICE_SEED, device), (BOOTSTRAP_SEED, bootstrap), (ADMIN_SEED, admin)):
        write_seed_file(path / name, key)
    write_secret(path / HUB_CREDS, jwt.format_creds(creds.jwt, creds.seed).encode())
    fleet_id = device.public_key[1:13]
    lines = [
        "# A Lattice Edge fleet, written by 'lattice-edge fleet init'; docs/fleet.md explains it.",
        "",
        "[fleet]",
        f"id = {_toml_value(fleet_id)}",
        f"account = {_toml_value(request.account)}",
        f"lattice = {_toml_value(request.lattice)}",
        f"hub_urls = {_toml_value(request.hub_urls)}",
        f"leaf_urls = {_toml_value(request.leaf_urls)}",
        f"js_domain = {_toml_value(request.js_domain)}",
        f"credential_ttl = {_toml_value(format_duration(request.credential_ttl_s))}",
        f"trusted_issuers = {_toml_value(request.trusted_issuers)}",
        f"cluster_issuers = {_toml_value(request.cluster_issuers)}",
        "",
        "[keys]",
        f"device = {_toml_value(device.public_key)}",
        f"bootstrap = {_toml_value(bootstrap.public_key)}",
        f"admin = {_toml_value(admin.public_key)}",
        "",
    ]
    write_atomic(path / FLEET_TOML, "\n".join(lines).encode(), mode=0o600)
    fleet = load_fleet(path)
    entries = fleet.signing_keys
    return FleetInitResult(fleet, entries, templates.nsc_commands(entries))


def resign_account_file(
    account_jwt: Path,
    operator_seed: Path,
    *,
    account: str,
    signing_keys: tuple[dict[str, Any], ...] = (),
    revocations: dict[str, int] | None = None,
) -> None:
    """Rewrite the account JWT file with the keys added / users revoked, re-signed."""
    try:
        operator = load_seed_file(operator_seed, KeyKind.OPERATOR)
    except KeyFileError as exc:
        raise FleetDirError(str(exc)) from exc
    try:
        token = account_jwt.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetDirError(f"cannot read the account JWT {account_jwt}: {exc}") from exc
    try:
        subject = jwt.decode(token).subject
        if subject != account:
            raise FleetDirError(f"{account_jwt} is the JWT of account {subject}, not {account}")
        updated = jwt.amend_account(
            token, operator, signing_keys=signing_keys, revocations=revocations
        )
    except IdentityError as exc:
        raise FleetDirError(f"{account_jwt}: {exc}") from exc
    write_atomic(account_jwt, (updated + "\n").encode())


def fleet_subjects(fleet: FleetDir) -> dict[str, str]:
    """The service's subjects for this fleet, for ``docs`` and ``--json`` output."""
    return {
        "challenge": subjects.enroll_challenge(fleet.fleet_id),
        "enroll": subjects.enroll_complete(fleet.fleet_id),
        "renew": f"{subjects.prefix(fleet.fleet_id)}.device.*.renew",
        "admin": f"{subjects.prefix(fleet.fleet_id)}.admin.>",
    }
