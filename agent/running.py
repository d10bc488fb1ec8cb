"""Which agents run on this machine for this user, and which config a command uses.

A running agent leaves its :class:`~agent.host.HostInfo` in its run file,
``<data_dir>/run/agent.json``. That file is only found through the config that names the
data directory, so the agent also leaves a pointer, ``<pid>.json``, in a per-user index
(:func:`index_dir`). A command run without ``--config`` (and without
``$LATTICE_EDGE_CONFIG``) then talks to the agent this user started with ``--config X``
instead of reporting it as down (:func:`resolve_config`).

An index entry is a hint, never trusted on its own: it counts only while its pid is alive
and the run file it points to names the same pid; anything else is stale and removed.
Writing the index never stops an agent (a read-only home only costs the discovery).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import CONFIG_ENV, Config, default_config_path, load_config
from agent.errors import ConfigError
from agent.fsutil import ensure_dir, write_atomic

__all__ = [
    "RUN_FILE",
    "ConfigChoice",
    "RunningAgent",
    "index_dir",
    "pid_alive",
    "read_run_file",
    "register",
    "resolve_config",
    "running_agents",
    "service_unit",
    "unregister",
]

logger = logging.getLogger("lattice_edge.host")

RUN_FILE = "agent.json"
SYSTEM_CONFIG = Path("/etc/lattice-edge/agent.toml")  # the packaged service's config
_MAX_RUN_FILE = 64 * 1024


def index_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where this user's running agents leave their pointers.

    ``$XDG_RUNTIME_DIR/lattice-edge/agents`` (cleared at logout and boot), else
    ``/run/lattice-edge/agents`` for root (a system service), else
    ``~/.local/state/lattice-edge/agents``.
    """
    environ = os.environ if env is None else env
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "lattice-edge" / "agents"
    if os.geteuid() == 0:
        return Path("/run/lattice-edge/agents")
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "lattice-edge" / "agents"


@dataclass(frozen=True, slots=True)
class RunningAgent:
    """An agent that runs now: its pid, its config (None: the embedded default), its run file."""

    pid: int
    config: Path | None
    data_dir: Path
    info: Mapping[str, Any]


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid exists (whoever owns it)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (the service user)
    return True


def read_run_file(path: Path) -> dict[str, Any] | None:
    """A run file's contents, or None when it is missing, unreadable or not a JSON object."""
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(_MAX_RUN_FILE))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def register(info: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path | None:
    """Leave a pointer to a running agent's run file; None when the index cannot be written."""
    pid = info.get("pid")
    data_dir = info.get("data_dir")
    if not isinstance(pid, int) or not isinstance(data_dir, str):
        return None
    entry = {"pid": pid, "config": info.get("config"), "data_dir": data_dir}
    path = index_dir(env) / f"{pid}.json"
    try:
        ensure_dir(path.parent, 0o700)
        write_atomic(path, json.dumps(entry).encode(), mode=0o600)
    except OSError as exc:
        logger.debug("cannot record the agent in %s: %s", path.parent, exc)
        return None
    return path


def unregister(pid: int, env: Mapping[str, str] | None = None) -> None:
    """Remove this agent's pointer (at shutdown)."""
    with contextlib.suppress(OSError):
        (index_dir(env) / f"{pid}.json").unlink()


def running_agents(env: Mapping[str, str] | None = None) -> list[RunningAgent]:
    """The agents this user runs now, by pid; stale pointers are removed on the way."""
    directory = index_dir(env)
    try:
        entries = sorted(directory.glob("*.json"))
    except OSError:
        return []
    agents: list[RunningAgent] = []
    for entry in entries:
        agent = _check(entry)
        if agent is None:
            with contextlib.suppress(OSError):
                entry.unlink()
        else:
            agents.append(agent)
    return sorted(agents, key=lambda agent: agent.pid)


def _check(entry: Path) -> RunningAgent | None:
    pointer = read_run_file(entry)
    if pointer is None or not pid_alive(pointer.get("pid")):
        return None
    data_dir = pointer.get("data_dir")
    if not isinstance(data_dir, str):
        return None
    info = read_run_file(Path(data_dir) / "run" / RUN_FILE)
    if info is None or info.get("pid") != pointer["pid"]:
        return None  # the pid was reused, or the agent is gone and the file was left
    config = info.get("config")
    return RunningAgent(
        pid=pointer["pid"],
        config=Path(config) if isinstance(config, str) else None,
        data_dir=Path(data_dir),
        info=info,
    )


@dataclass(frozen=True, slots=True)
class ConfigChoice:
    """The config a command uses and how it was chosen (said in errors and ``status``)."""

    config: Config
    path: Path | None  # None: the embedded default
    origin: str  # "--config", "$LATTICE_EDGE_CONFIG", "the running agent (pid N)", ...

    def describe(self) -> str:
        """``/etc/lattice-edge/agent.toml (from --config)`` or the embedded default."""
        if self.path is None:
            return f"the embedded default config ({self.origin})"
        return f"{self.path} (from {self.origin})"


def resolve_config(
    explicit: Path | None, env: Mapping[str, str] | None = None, *, follow_running: bool = True
) -> ConfigChoice:
    """The config a command uses: ``--config``, then ``$LATTICE_EDGE_CONFIG``, then the
    config of the one agent this user runs, then the default file, then (for a user who
    may read it) the system service's ``/etc/lattice-edge/agent.toml``, then the embedded
    default.

    With more than one running agent and nothing named, which one is meant is not
    guessed: the error lists them. ``follow_running=False`` skips the running agents
    (``run`` itself, which must not pick up another agent's config).
    """
    environ = os.environ if env is None else env
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return ConfigChoice(load_config(explicit, environ), explicit, "--config")
    named = environ.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", source=CONFIG_ENV)
        return ConfigChoice(load_config(path, environ), path, f"${CONFIG_ENV}")
    if follow_running:
        agents = running_agents(environ)
        if len(agents) == 1:
            (agent,) = agents
            origin = f"the running agent, pid {agent.pid}"
            if agent.config is not None and not agent.config.is_file():
                raise ConfigError(
                    f"the running agent (pid {agent.pid}) was started with {agent.config}, "
                    "which no longer exists; pass --config"
                )
            return ConfigChoice(load_config(agent.config, environ), agent.config, origin)
        if len(agents) > 1:
            listed = ", ".join(f"pid {a.pid}: {a.config or 'embedded default'}" for a in agents)
            raise ConfigError(
                f"{len(agents)} agents are running for this user ({listed}); "
                "say which one with --config"
            )
    default = default_config_path()
    if default.is_file():
        return ConfigChoice(load_config(default, environ), default, "the default location")
    # An operator in group lattice-edge on a packaged device: the service's config.
    if default != SYSTEM_CONFIG and os.access(SYSTEM_CONFIG, os.R_OK):
        return ConfigChoice(load_config(SYSTEM_CONFIG, environ), SYSTEM_CONFIG, "the system config")
    return ConfigChoice(load_config(None, environ), None, "no config file found")


def service_unit(env: Mapping[str, str] | None = None) -> str | None:
    """The systemd unit this process runs in, or None when systemd did not start it.

    systemd sets ``INVOCATION_ID`` (and ``NOTIFY_SOCKET`` for ``Type=notify``) for the
    processes of a unit; the unit's name is the last part of the cgroup path. Recorded in
    the run file so ``lattice-edge logs`` knows to read the journal.
    """
    environ = os.environ if env is None else env
    if not (environ.get("INVOCATION_ID") or environ.get("NOTIFY_SOCKET")):
        return None
    try:
        cgroup = Path("/proc/self/cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cgroup = ""
    for line in cgroup.splitlines():
        unit = line.rpartition("/")[2]
        if unit.endswith(".service"):
            return unit
    return "lattice-edge.service"
