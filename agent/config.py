"""The agent's configuration: one frozen dataclass tree, loaded once and passed down.

Sources, later ones winning: built-in defaults, the TOML file, then ``LATTICE_EDGE_*``
environment variables (``LATTICE_EDGE_LEAF_LISTEN=127.0.0.1:5222`` sets ``leaf.listen``).
Every error names the key and the file or variable it came from. Relative paths in the
file are taken relative to the file's directory. ``docs/configuration.md`` lists every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.errors import ConfigError
from agent.identity.keys import KeyKind, is_public_key
from profiles import AUTO, BUDGET_FIELDS, ProfileLoadError, available_profiles, coerce_budget

__all__ = [
    "CONFIG_ENV",
    "ActorSettings",
    "Config",
    "FirmwareDevice",
    "FirmwareSettings",
    "ForwardSettings",
    "HostPort",
    "HostSettings",
    "LeafSettings",
    "LocalUserSettings",
    "LogFileSettings",
    "MqttUserSettings",
    "TrustSettings",
    "UpstreamSettings",
    "config_target",
    "default_config_path",
    "default_data_dir",
    "embedded_default",
    "load_config",
    "locate_config",
    "parse_config",
    "redact_url",
]

CONFIG_ENV = "LATTICE_EDGE_CONFIG"
ENV_PREFIX = "LATTICE_EDGE_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A ``host:port`` address to listen on or connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse ``host:port`` (``[v6]:port`` for IPv6); raises ``ValueError``."""
        host, sep, port_text = text.strip().rpartition(":")
        if not sep or not host:
            raise ValueError(f"'{text}' is not host:port")
        host = host.removeprefix("[").removesuffix("]")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port in '{text}' must be 1-65535")
        return cls(host, int(port_text))


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Who this host is on the lattice and which board profile it uses."""

    name: str
    lattice: str
    profile: str
    data_dir: Path
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LocalUserSettings:
    """A ``[[leaf.local_users]]`` entry: a local client with its own permissions."""

    name: str
    password_file: Path | None
    nkey: str | None
    publish: tuple[str, ...] | None  # allow list; None: the anonymous user's rules
    subscribe: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class MqttUserSettings:
    """A ``[[leaf.mqtt_users]]`` entry: one MCU allowed on the MQTT listener.

    ``secret_file`` holds its password (``password_file``) or token (``token_file``; MQTT
    sends either as the password); ``subjects`` are the NATS subjects its MQTT topic
    filters cover (``mcu/{name}/#`` by default: ``mcu.{name}``, ``mcu.{name}.>``).
    """

    name: str
    secret_file: Path
    topics: tuple[str, ...]
    subjects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LeafSettings:
    """The local nats-server leaf node."""

    nats_server: Path | None
    listen: HostPort
    monitor: HostPort
    ready_timeout_s: float
    jetstream: bool
    jetstream_domain: str | None
    sync_interval: str | None
    allow_anonymous: bool = True
    local_users: tuple[LocalUserSettings, ...] = ()
    mqtt_listen: HostPort | None = None  # nats-server's MQTT listener (networked MCUs)
    mqtt_users: tuple[MqttUserSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The leafnode remote that bridges the device to a cloud lattice."""

    urls: tuple[str, ...]
    credentials: Path | None
    tls_ca_file: Path | None
    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_handshake_first: bool
    # how soon the leaf retries a lost uplink (nats-server 2.11+ only; older ones: 1 s)
    reconnect_interval_s: float = 0.25


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """Whom the host trusts: actor issuers and invocation-signing cluster keys."""

    trusted_issuers: tuple[str, ...]
    cluster_issuers: tuple[str, ...]
    allow_unsigned: bool


@dataclass(frozen=True, slots=True)
class ActorSettings:
    """Where actor modules may come from, and which unverifiable ones may run anyway."""

    file_roots: tuple[Path, ...]  # file:// references must resolve inside one of these
    allow_legacy_claims: bool  # run modules whose claims' hash cannot be verified
    pinned_modules: tuple[str, ...]  # SHA-256 digests (hex) of modules trusted as they are


@dataclass(frozen=True, slots=True)
class FirmwareDevice:
    """One microcontroller on the firmware bridge (``[[firmware.devices]]``)."""

    name: str
    transport: Literal["serial", "udp"]
    port: str | None  # serial device path
    baud: int
    address: HostPort | None  # udp
    stat_groups: tuple[str, ...] | None  # None: every group the device lists
    timeout_s: float  # one SMP request attempt; retransmitted on expiry


@dataclass(frozen=True, slots=True)
class FirmwareSettings:
    """The firmware bridge (``[firmware]``); no devices means the bridge is not loaded."""

    trusted_keys: tuple[Path, ...]
    telemetry_period_s: float | None  # None: the board profile's telemetry_interval_s
    health_window_s: float
    return_timeout_s: float
    devices: tuple[FirmwareDevice, ...]


NO_FIRMWARE = FirmwareSettings((), None, 5.0, 60.0, ())


@dataclass(frozen=True, slots=True)
class LogFileSettings:
    """``[log] file``: a log file, rotated at ``max_bytes`` with ``backups`` old copies kept."""

    path: Path
    max_bytes: int = 10 * 2**20
    backups: int = 3


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """Store-and-forward (``[forward]``): what the outbox captures and where it goes.

    ``enabled`` defaults to on when an upstream is configured (and the leaf runs JetStream);
    the host's telemetry is always captured, ``subjects`` adds application subjects.
    """

    enabled: bool = False
    subjects: tuple[str, ...] = ()
    window: int = 256  # messages in flight to the hub at once
    upstream_prefix: str = "lattice-edge.uplink"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. ``source`` is None for the embedded default."""

    host: HostSettings
    leaf: LeafSettings
    upstream: UpstreamSettings | None
    trust: TrustSettings
    budgets: Mapping[str, int | float]
    log_level: str
    actors: ActorSettings = ActorSettings((), False, ())
    log_format: str = "text"
    source: Path | None = None
    firmware: FirmwareSettings = field(default_factory=lambda: NO_FIRMWARE)
    log_file: LogFileSettings | None = None
    forward: ForwardSettings = ForwardSettings()

    @property
    def keys_dir(self) -> Path:
        """Where the host's seeds live (mode 0700)."""
        return self.host.data_dir / "keys"

    @property
    def run_dir(self) -> Path:
        """Where the running agent leaves its state file and the leaf's config."""
        return self.host.data_dir / "run"


# --- default locations ---------------------------------------------------------------


def _is_root() -> bool:
    return os.geteuid() == 0


def default_config_path() -> Path:
    """``/etc/lattice-edge/agent.toml`` as root, else under ``$XDG_CONFIG_HOME``."""
    if _is_root():
        return Path("/etc/lattice-edge/agent.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lattice-edge" / "agent.toml"


def default_data_dir() -> Path:
    """``/var/lib/lattice-edge`` as root, else under ``$XDG_DATA_HOME``."""
    if _is_root():
        return Path("/var/lib/lattice-edge")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lattice-edge"


def config_target(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Where the config file is or goes, by the same precedence, whether or not it exists."""
    environ = os.environ if env is None else env
    if explicit is not None:
        return explicit
    named = environ.get(CONFIG_ENV)
    return Path(named) if named else default_config_path()


def locate_config(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to use: ``--config``, then ``LATTICE_EDGE_CONFIG``, then the default.

    An explicitly named file must exist; a missing default means "no config anywhere".
    """
    environ = os.environ if env is None else env
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    named = environ.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", source=CONFIG_ENV)
        return path
    default = default_config_path()
    return default if default.is_file() else None


# --- loading -------------------------------------------------------------------------


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or the embedded default when None) and apply env overrides."""
    environ = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=path) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", source=path) from exc
    else:
        raw = embedded_default_table()
    overrides = _apply_env(raw, environ)
    base_dir = path.parent.resolve() if path is not None else Path.cwd()
    return parse_config(raw, source=path, base_dir=base_dir, overrides=overrides)


def embedded_default_table() -> dict[str, Any]:
    """The raw table ``run`` uses when there is no config file anywhere.

    It pins the demo actor by its digest and trusts no issuer: the demo issuer's seed is
    public (the demo actor is rebuilt from the repository), so trusting it would let
    anyone sign a module this host runs.
    """
    from agent.runtime.demo import DEMO_SHA256

    return {
        "host": {"data_dir": str(default_data_dir() / "embedded")},
        "actors": {"pinned_modules": [DEMO_SHA256]},
    }


def embedded_default(env: Mapping[str, str] | None = None) -> Config:
    """The embedded default: auto profile, own data dir, standalone leaf on loopback."""
    return load_config(None, env)


_Section = dict[str, Any]
T = TypeVar("T")


class _Reader:
    """Reads one TOML table, converting values and remembering which keys were used."""

    def __init__(
        self,
        table: object,
        name: str,
        source: Path | None,
        overrides: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        if table is None:
            table = {}
        if not isinstance(table, dict):
            raise ConfigError("must be a table", key=name, source=source)
        self.table: dict[str, Any] = table
        self.name = name
        self.source = source
        self.overrides = overrides or {}

    def error(self, key: str, message: str) -> ConfigError:
        dotted = f"{self.name}.{key}"
        origin = self.overrides.get(dotted)
        return ConfigError(message, key=dotted, source=origin[0] if origin else self.source)

    def get(self, key: str, default: T, convert: Callable[[Any], T]) -> T:
        if key not in self.table:
            return default
        try:
            return convert(self.table[key])
        except (TypeError, ValueError) as exc:
            origin = self.overrides.get(f"{self.name}.{key}")
            if origin is not None:
                # An env value read as TOML (4222 -> int) may be meant as text.
                try:
                    return convert(origin[1])
                except (TypeError, ValueError):
                    pass
            raise self.error(key, str(exc)) from exc

    def reject_unknown(self, known: set[str]) -> None:
        unknown = sorted(set(self.table) - known)
        if unknown:
            raise self.error(unknown[0], f"unknown key (known keys: {', '.join(sorted(known))})")


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {value!r}")
    return value


def _name(value: Any) -> str:
    text = _string(value)
    if not _NAME.match(text):
        raise ValueError(f"'{text}' must be 1-64 letters, digits, '-' or '_'")
    return text


def _profile_name(value: Any) -> str:
    text = _string(value)
    known = available_profiles()
    if text != AUTO and text not in known:
        raise ValueError(f"unknown profile '{text}' (known: auto, {', '.join(known)})")
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {value!r}")
    return value


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return float(value)


def _backups(value: Any) -> int:
    # At least one: RotatingFileHandler with no backups never truncates, so the cap fails.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError(f"must be a whole number from 1 to 100, got {value!r}")
    return value


def _host_port(value: Any) -> HostPort:
    return HostPort.parse(_string(value))


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"must be a list of strings, got {value!r}")
    return tuple(value)


def _keys_of(kind: KeyKind) -> Callable[[Any], tuple[str, ...]]:
    def convert(value: Any) -> tuple[str, ...]:
        keys = _string_list(value)
        for key in keys:
            if not is_public_key(key, kind):
                raise ValueError(f"'{key}' is not a public {kind.name.lower()} key")
        return keys

    return convert


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError("must be a table of strings")
    return {str(k): _string(v) for k, v in value.items()}


def _budget_converter(key: str) -> Callable[[Any], int | float]:
    def convert(value: Any) -> int | float:
        try:
            return coerce_budget(key, value, "budgets")
        except ProfileLoadError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from exc

    return convert


def _url(value: Any) -> str:
    text = _string(value)
    match = re.match(r"^(nats-leaf|nats|tls|ws|wss)://([^\s/]+)", text)
    if not match:
        raise ValueError(
            f"'{redact_url(text)}' must be a nats-leaf://, tls://, ws:// or wss:// URL"
        )
    if "@" in match.group(2):
        # A password in a URL ends up in logs, status output and world-readable files.
        raise ValueError(
            f"'{redact_url(text)}' carries credentials; put them in a .creds file "
            "(upstream.credentials) instead"
        )
    return text


def redact_url(text: str) -> str:
    """``text`` with any ``user:password@`` part of a URL replaced by ``***@``."""
    return re.sub(r"(://)[^/@\s]*@", r"\1***@", text)


def _sha256(value: Any) -> str:
    text = _string(value).lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"'{text}' is not a SHA-256 digest (64 hex digits)")
    return text


def _user_key(value: Any) -> str:
    text = _string(value)
    if not is_public_key(text, KeyKind.USER):
        raise ValueError(f"'{text}' is not a public user key (U…)")
    return text


def parse_config(
    raw: Mapping[str, Any],
    *,
    source: Path | None,
    base_dir: Path,
    overrides: Mapping[str, tuple[str, str]] | None = None,
) -> Config:
    """Validate a raw table into a :class:`Config`; errors name key and source.

    ``overrides`` maps dotted keys set from the environment to (variable, raw text), so
    an error in an override names the variable instead of the file.
    """

    def path_of(value: Any) -> Path:
        path = Path(_string(value)).expanduser()
        return path if path.is_absolute() else base_dir / path

    def optional_path(value: Any) -> Path | None:
        return path_of(value) if value else None

    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section (known: {', '.join(_SECTIONS)})",
            key=unknown[0],
            source=source,
        )

    h = _Reader(raw.get("host"), "host", source, overrides)
    h.reject_unknown({"name", "lattice", "profile", "data_dir", "labels"})
    host = HostSettings(
        name=h.get("name", "lattice-edge", _name),
        lattice=h.get("lattice", "default", _name),
        profile=h.get("profile", AUTO, _profile_name),
        data_dir=h.get("data_dir", default_data_dir(), path_of),
        labels=h.get("labels", {}, _labels),
    )

    lf = _Reader(raw.get("leaf"), "leaf", source, overrides)
    lf.reject_unknown(
        {"nats_server", "listen", "monitor", "ready_timeout_s", "jetstream",
         "jetstream_domain", "sync_interval", "allow_anonymous", "local_users",
         "mqtt_listen", "mqtt_users"}
    )  # fmt: skip
    no_users: tuple[LocalUserSettings, ...] = ()
    no_mcus: tuple[MqttUserSettings, ...] = ()
    leaf = LeafSettings(
        nats_server=lf.get("nats_server", None, optional_path),
        listen=lf.get("listen", HostPort("127.0.0.1", 4222), _host_port),
        monitor=lf.get("monitor", HostPort("127.0.0.1", 8222), _host_port),
        ready_timeout_s=lf.get("ready_timeout_s", 15.0, _positive),
        jetstream=lf.get("jetstream", True, _bool),
        jetstream_domain=lf.get("jetstream_domain", None, lambda v: _name(v) if v else None),
        sync_interval=lf.get("sync_interval", None, lambda v: _string(v) or None),
        allow_anonymous=lf.get("allow_anonymous", True, _bool),
        local_users=lf.get(
            "local_users",
            no_users,
            lambda v: _local_users(v, source, overrides, path_of),
        ),
        mqtt_listen=lf.get("mqtt_listen", None, lambda v: _host_port(v) if v else None),
        mqtt_users=lf.get(
            "mqtt_users", no_mcus, lambda v: _mqtt_users(v, source, overrides, path_of)
        ),
    )
    if leaf.listen == leaf.monitor:
        raise lf.error("monitor", "must differ from leaf.listen")
    _check_mqtt(leaf, lf)

    upstream: UpstreamSettings | None = None
    if raw.get("upstream"):
        u = _Reader(raw.get("upstream"), "upstream", source, overrides)
        u.reject_unknown(
            {"urls", "credentials", "tls_ca_file", "tls_cert_file", "tls_key_file",
             "tls_handshake_first", "reconnect_interval_s"}
        )  # fmt: skip
        no_urls: tuple[str, ...] = ()
        urls = u.get("urls", no_urls, lambda v: tuple(_url(x) for x in _string_list(v)))
        if not urls:
            raise u.error("urls", "at least one upstream URL is required")
        upstream = UpstreamSettings(
            urls=urls,
            credentials=u.get("credentials", None, optional_path),
            tls_ca_file=u.get("tls_ca_file", None, optional_path),
            tls_cert_file=u.get("tls_cert_file", None, optional_path),
            tls_key_file=u.get("tls_key_file", None, optional_path),
            tls_handshake_first=u.get("tls_handshake_first", False, _bool),
            reconnect_interval_s=u.get("reconnect_interval_s", 0.25, _positive),
        )
        if (upstream.tls_cert_file is None) != (upstream.tls_key_file is None):
            raise u.error("tls_key_file", "tls_cert_file and tls_key_file go together")

    t = _Reader(raw.get("trust"), "trust", source, overrides)
    t.reject_unknown({"trusted_issuers", "cluster_issuers", "allow_unsigned"})
    trust = TrustSettings(
        trusted_issuers=t.get("trusted_issuers", (), _keys_of(KeyKind.ACCOUNT)),
        cluster_issuers=t.get("cluster_issuers", (), _keys_of(KeyKind.CLUSTER)),
        allow_unsigned=t.get("allow_unsigned", False, _bool),
    )

    a = _Reader(raw.get("actors"), "actors", source, overrides)
    a.reject_unknown({"file_roots", "allow_legacy_claims", "pinned_modules"})
    actors = ActorSettings(
        file_roots=a.get(
            "file_roots",
            (host.data_dir / "actors",),
            lambda v: tuple(path_of(item) for item in _string_list(v)),
        ),
        allow_legacy_claims=a.get("allow_legacy_claims", False, _bool),
        pinned_modules=a.get(
            "pinned_modules", (), lambda v: tuple(_sha256(item) for item in _string_list(v))
        ),
    )

    b = _Reader(raw.get("budgets"), "budgets", source, overrides)
    b.reject_unknown(set(BUDGET_FIELDS))
    budgets = {key: b.get(key, 0.0, _budget_converter(key)) for key in b.table}

    lg = _Reader(raw.get("log"), "log", source, overrides)
    lg.reject_unknown({"level", "format", "file", "file_max_mb", "file_backups"})
    log_level = lg.get("level", "info", _string).lower()
    if log_level not in LOG_LEVELS:
        raise lg.error("level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_format = lg.get("format", "text", _string).lower()
    if log_format not in LOG_FORMATS:
        raise lg.error("format", f"must be one of {', '.join(LOG_FORMATS)}")
    log_path = lg.get("file", None, optional_path)
    log_file = None
    if log_path is not None:
        log_file = LogFileSettings(
            path=log_path,
            max_bytes=int(lg.get("file_max_mb", 10.0, _positive) * 2**20),
            backups=lg.get("file_backups", 3, _backups),
        )

    forward = _forward_settings(raw.get("forward"), source, overrides, upstream, leaf)

    return Config(
        host=host,
        leaf=leaf,
        upstream=upstream,
        trust=trust,
        budgets=budgets,
        log_level=log_level,
        actors=actors,
        log_format=log_format,
        source=source,
        firmware=_parse_firmware(raw.get("firmware"), source, path_of, overrides),
        log_file=log_file,
        forward=forward,
    )


def _forward_settings(
    table: object,
    source: Path | None,
    overrides: Mapping[str, tuple[str, str]] | None,
    upstream: UpstreamSettings | None,
    leaf: LeafSettings,
) -> ForwardSettings:
    """The ``[forward]`` table (see ``docs/store-and-forward.md``)."""
    from agent.forward.subjects import check_forward_subject, check_upstream_prefix

    f = _Reader(table, "forward", source, overrides)
    f.reject_unknown({"enabled", "subjects", "window", "upstream_prefix"})
    default = ForwardSettings()

    def window(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ValueError(f"must be an integer from 1 to 4096, got {value!r}")
        return value

    prefix = f.get("upstream_prefix", default.upstream_prefix,
                   lambda v: check_upstream_prefix(_string(v)))  # fmt: skip
    subjects = f.get(
        "subjects", default.subjects,
        lambda v: tuple(check_forward_subject(s, prefix) for s in _string_list(v)),
    )  # fmt: skip
    enabled = f.get("enabled", upstream is not None and leaf.jetstream, _bool)
    if enabled and not leaf.jetstream:
        raise f.error("enabled", "store-and-forward needs the leaf's JetStream (leaf.jetstream)")
    return ForwardSettings(
        enabled=enabled,
        subjects=subjects,
        window=f.get("window", default.window, window),
        upstream_prefix=prefix,
    )


def _local_users(
    value: Any,
    source: Path | None,
    overrides: Mapping[str, tuple[str, str]] | None,
    path_of: Callable[[Any], Path],
) -> tuple[LocalUserSettings, ...]:
    if not isinstance(value, list):
        raise TypeError("must be an array of tables ([[leaf.local_users]])")
    users: list[LocalUserSettings] = []
    for index, table in enumerate(value):
        r = _Reader(table, f"leaf.local_users[{index}]", source, overrides)
        r.reject_unknown({"name", "password_file", "nkey", "publish", "subscribe"})
        if "name" not in r.table:
            raise r.error("name", "is required")
        user = LocalUserSettings(
            name=r.get("name", "", _name),
            password_file=r.get("password_file", None, path_of),
            nkey=r.get("nkey", None, _user_key),
            publish=r.get("publish", None, _string_list),
            subscribe=r.get("subscribe", None, _string_list),
        )
        if (user.password_file is None) == (user.nkey is None):
            raise r.error("password_file", "give exactly one of password_file and nkey")
        if user.name in ("local", *(u.name for u in users)):
            raise r.error("name", f"'{user.name}' is taken")
        users.append(user)
    return tuple(users)


def _mqtt_users(
    value: Any,
    source: Path | None,
    overrides: Mapping[str, tuple[str, str]] | None,
    path_of: Callable[[Any], Path],
) -> tuple[MqttUserSettings, ...]:
    from agent.leaf.mqtt import DEFAULT_TOPICS, filter_to_subjects

    if not isinstance(value, list):
        raise TypeError("must be an array of tables ([[leaf.mqtt_users]])")
    users: list[MqttUserSettings] = []
    for index, table in enumerate(value):
        r = _Reader(table, f"leaf.mqtt_users[{index}]", source, overrides)
        r.reject_unknown({"name", "password_file", "token_file", "topics"})
        if "name" not in r.table:
            raise r.error("name", "is required")
        name = r.get("name", "", _name)
        files = [key for key in ("password_file", "token_file") if key in r.table]
        if len(files) != 1:
            raise r.error("password_file", "give exactly one of password_file and token_file")
        defaults = tuple(topic.format(name=name) for topic in DEFAULT_TOPICS)
        topics = r.get("topics", defaults, _string_list)
        subjects: list[str] = []
        for topic in topics:
            try:
                subjects.extend(s for s in filter_to_subjects(topic) if s not in subjects)
            except ValueError as exc:
                raise r.error("topics", str(exc)) from None
        if not subjects:
            raise r.error("topics", "must list at least one MQTT topic filter")
        if name in ("local", *(u.name for u in users)):
            raise r.error("name", f"'{name}' is taken")
        users.append(MqttUserSettings(name, r.get(files[0], Path(), path_of), topics,
                                      tuple(subjects)))  # fmt: skip
    return tuple(users)


def _check_mqtt(leaf: LeafSettings, lf: _Reader) -> None:
    from agent.leaf.mqtt import is_loopback

    if leaf.mqtt_listen is None:
        if leaf.mqtt_users:
            raise lf.error("mqtt_users", "need leaf.mqtt_listen")
        return
    if not leaf.jetstream:
        raise lf.error("mqtt_listen", "needs JetStream (leaf.jetstream = true)")
    if leaf.mqtt_listen in (leaf.listen, leaf.monitor):
        raise lf.error("mqtt_listen", "must differ from leaf.listen and leaf.monitor")
    if not is_loopback(leaf.mqtt_listen.host) and not leaf.mqtt_users:
        raise lf.error(
            "mqtt_listen",
            f"listens beyond loopback ({leaf.mqtt_listen.host}) without authentication; "
            "add [[leaf.mqtt_users]] for the MCUs",
        )
    taken = {user.name for user in leaf.local_users} & {user.name for user in leaf.mqtt_users}
    if taken:
        raise lf.error("mqtt_users", f"'{sorted(taken)[0]}' is also a local user")


# --- environment overrides -------------------------------------------------------------

# Variables that configure the tooling around the agent, not a config key; the test
# suite's own variables start with LATTICE_EDGE_TEST_, the Debian packaging scripts'
# with LATTICE_EDGE_DEB_ (they run the agent inside their chroots).
_NOT_KEYS = {"CONFIG", "FIXTURES", "REQUIRE_FIXTURES", "DEBUG", "FLEET_DIR"}
_SECTIONS = (
    "host", "leaf", "upstream", "trust", "actors", "budgets", "log", "firmware", "forward"
)  # fmt: skip


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Fold ``LATTICE_EDGE_<SECTION>_<KEY>`` variables into ``raw``.

    Values are read as TOML values when they parse (``5``, ``true``, ``["a"]``) and as
    plain strings otherwise, so ``127.0.0.1:4222`` needs no quotes. Returns the dotted
    keys that were set, with the variable and its raw text.
    """
    origins: dict[str, tuple[str, str]] = {}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name.removeprefix(ENV_PREFIX)
        if rest in _NOT_KEYS or rest.startswith(("TEST_", "DEB_")):
            continue
        section = next((s for s in _SECTIONS if rest.startswith(s.upper() + "_")), None)
        if section is None:
            raise ConfigError(
                f"does not name a config key (sections: {', '.join(_SECTIONS)})", source=name
            )
        key = rest.removeprefix(section.upper() + "_").lower()
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError("must be a table", key=section)
        table[key] = _env_value(value)
        origins[f"{section}.{key}"] = (name, value)
    return origins


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# --- [firmware] ------------------------------------------------------------------------

_STAT_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _parse_firmware(
    table: Any,
    source: Path | None,
    path_of: Callable[[Any], Path],
    overrides: Mapping[str, tuple[str, str]] | None,
) -> FirmwareSettings:
    """``[firmware]`` and its ``[[firmware.devices]]``; absent means no bridge."""
    if table is None:
        return NO_FIRMWARE
    fw = _Reader(table, "firmware", source, overrides)
    fw.reject_unknown(
        {"trusted_keys", "telemetry_period_s", "health_window_s", "return_timeout_s", "devices"}
    )
    no_keys: tuple[str, ...] = ()
    keys = tuple(path_of(k) for k in fw.get("trusted_keys", no_keys, _string_list))
    period = fw.get("telemetry_period_s", None, _positive)
    raw_devices = fw.table.get("devices", [])
    if not isinstance(raw_devices, list):
        raise fw.error("devices", "must be an array of tables ([[firmware.devices]])")
    devices: list[FirmwareDevice] = []
    for index, entry in enumerate(raw_devices):
        device = _parse_firmware_device(entry, index, source, overrides)
        if any(d.name == device.name for d in devices):
            raise ConfigError(
                f"device name '{device.name}' is used twice",
                key=f"firmware.devices[{index}].name",
                source=source,
            )
        devices.append(device)
    return FirmwareSettings(
        trusted_keys=keys,
        telemetry_period_s=period,
        health_window_s=fw.get("health_window_s", NO_FIRMWARE.health_window_s, _positive),
        return_timeout_s=fw.get("return_timeout_s", NO_FIRMWARE.return_timeout_s, _positive),
        devices=tuple(devices),
    )


def _parse_firmware_device(
    entry: Any, index: int, source: Path | None, overrides: Mapping[str, tuple[str, str]] | None
) -> FirmwareDevice:
    d = _Reader(entry, f"firmware.devices[{index}]", source, overrides)
    d.reject_unknown({"name", "transport", "port", "baud", "address", "stat_groups", "timeout_s"})
    if "name" not in d.table:
        raise d.error("name", "every device needs a name")
    name = d.get("name", "", _name)

    def transport_of(value: Any) -> Literal["serial", "udp"]:
        text = _string(value)
        if text == "serial":
            return "serial"
        if text == "udp":
            return "udp"
        raise ValueError(f"must be 'serial' or 'udp', got '{text}'")

    def device_path(value: Any) -> str:
        text = _string(value)
        if not text.startswith("/"):
            raise ValueError(f"'{text}' must be an absolute device path like /dev/ttyACM0")
        return text

    def baud_rate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 50 <= value <= 12_000_000:
            raise ValueError(f"must be a baud rate between 50 and 12000000, got {value!r}")
        return value

    def stat_group_names(value: Any) -> tuple[str, ...]:
        names = _string_list(value)
        for group in names:
            if not _STAT_GROUP.match(group):
                raise ValueError(f"'{group}' must be 1-32 letters, digits, '-' or '_'")
        return names

    default: Literal["serial", "udp"] = "serial"
    transport = d.get("transport", default, transport_of)
    port = d.get("port", None, device_path)
    address = d.get("address", None, _host_port)
    if transport == "serial" and port is None:
        raise d.error("port", "a serial device needs port (e.g. /dev/ttyACM0)")
    if transport == "udp" and address is None:
        raise d.error("address", "a udp device needs address (host:port, mcumgr uses 1337)")
    if transport == "serial" and address is not None:
        raise d.error("address", "is for udp devices; a serial device has port and baud")
    if transport == "udp" and (port is not None or "baud" in d.table):
        raise d.error("port" if port is not None else "baud", "is for serial devices")
    return FirmwareDevice(
        name=name,
        transport=transport,
        port=port,
        baud=d.get("baud", 115200, baud_rate),
        address=address,
        stat_groups=d.get("stat_groups", None, stat_group_names),
        timeout_s=d.get("timeout_s", 1.5, _positive),
    )
