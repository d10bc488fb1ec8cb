"""Hardware profiles: one TOML file per board, and ``auto`` detection.

A profile is data: the rules that recognise a board and the budgets the agent applies on
it (sandbox workers, actor memory, invocation deadline, JetStream and nats-server memory,
heartbeat periods). :func:`load_profile` reads one by name; :func:`detect` picks one from
the device tree model, the machine architecture and the total RAM.
"""

from __future__ import annotations

import dataclasses
import platform
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "AUTO",
    "Budgets",
    "Detection",
    "Profile",
    "ProfileLoadError",
    "available_profiles",
    "detect",
    "load_profile",
    "read_board_facts",
]

AUTO = "auto"
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


class ProfileLoadError(Exception):
    """A profile name is unknown or its file is malformed.

    Kept free of the agent's imports so this package stays a leaf; the agent converts it
    into :class:`agent.errors.ProfileError` at its boundary.
    """


@dataclass(frozen=True, slots=True)
class Budgets:
    """Resource budgets the agent applies on a board."""

    sandbox_workers: int
    max_actors: int
    actor_memory_pages: int
    actor_stack_bytes: int
    invocation_deadline_s: float
    worker_recycle_calls: int
    worker_memory_limit_mb: int
    max_module_mb: int
    nats_max_payload: int
    jetstream_max_memory_mb: int
    jetstream_max_file_mb: int
    gomemlimit_mb: int
    heartbeat_interval_s: float
    telemetry_interval_s: float
    store_forward_mb: int
    store_forward_max_age_h: float

    def replace(self, **changes: Any) -> Budgets:
        """Return a copy with some budgets overridden (validated by the caller)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Profile:
    """A named board profile: how to recognise the board and what budgets to use."""

    name: str
    description: str
    design_ram_mb: int
    models: tuple[str, ...]
    machines: tuple[str, ...]
    min_ram_mb: int
    low_ram_fallback: str | None
    budgets: Budgets


@dataclass(frozen=True, slots=True)
class Detection:
    """The outcome of ``auto`` detection, with the facts it was based on."""

    profile: Profile
    model: str | None
    machine: str
    ram_mb: int
    reason: str


# Field name -> annotation ("int" or "float": annotations are strings under PEP 563).
BUDGET_FIELDS: dict[str, object] = {f.name: f.type for f in dataclasses.fields(Budgets)}


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package, sorted."""
    root = resources.files(__name__)
    return sorted(
        entry.name.removesuffix(".toml") for entry in root.iterdir() if entry.name.endswith(".toml")
    )


def load_profile(name: str) -> Profile:
    """Load the shipped profile ``name``; raise :class:`ProfileLoadError` if unknown."""
    if name not in available_profiles():
        known = ", ".join(available_profiles())
        raise ProfileLoadError(f"unknown profile '{name}' (known: {known}, or 'auto')")
    text = resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    try:
        return parse_profile(tomllib.loads(text), source=f"{name}.toml")
    except tomllib.TOMLDecodeError as exc:
        raise ProfileLoadError(f"{name}.toml: {exc}") from exc


def parse_profile(data: dict[str, Any], *, source: str) -> Profile:
    """Build a :class:`Profile` from parsed TOML, naming the offending key on error."""
    match = _table(data, "match", source)
    budgets_table = _table(data, "budgets", source)
    missing = sorted(set(BUDGET_FIELDS) - set(budgets_table))
    unknown = sorted(set(budgets_table) - set(BUDGET_FIELDS))
    if missing or unknown:
        raise ProfileLoadError(f"{source}: budgets missing {missing} / unknown {unknown}")
    values = {key: coerce_budget(key, value, source) for key, value in budgets_table.items()}
    budgets = Budgets(**values)  # type: ignore[arg-type]  # types checked by coerce_budget
    fallback = match.get("low_ram_fallback")
    return Profile(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        design_ram_mb=int(data.get("design_ram_mb", 512)),
        models=tuple(str(m) for m in match.get("models", [])),
        machines=tuple(str(m).lower() for m in match.get("machines", [])),
        min_ram_mb=int(match.get("min_ram_mb", 0)),
        low_ram_fallback=str(fallback) if fallback else None,
        budgets=budgets,
    )


def coerce_budget(key: str, value: object, source: str) -> int | float:
    """Check one budget value's type and range; the message names ``key`` and ``source``."""
    expected = BUDGET_FIELDS.get(key)
    if expected is None:
        raise ProfileLoadError(f"{source}: unknown budget '{key}'")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileLoadError(f"{source}: budget '{key}' must be a number, got {value!r}")
    if expected in ("int", int):
        if not isinstance(value, int):
            raise ProfileLoadError(f"{source}: budget '{key}' must be an integer, got {value!r}")
        result: int | float = value
    else:
        result = float(value)
    if result <= 0:
        raise ProfileLoadError(f"{source}: budget '{key}' must be positive, got {value!r}")
    return result


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    table = data.get(key)
    if not isinstance(table, dict):
        raise ProfileLoadError(f"{source}: missing table [{key}]")
    return table


def read_board_facts(
    model_path: Path = DEVICE_TREE_MODEL,
) -> tuple[str | None, str, int]:
    """Read (device tree model, machine, total RAM in MB) from this machine."""
    import psutil  # imported here: only detection needs it

    model: str | None
    try:
        model = model_path.read_bytes().rstrip(b"\x00\n").decode("utf-8", "replace") or None
    except OSError:
        model = None
    ram_mb = psutil.virtual_memory().total // (1024 * 1024)
    return model, platform.machine(), int(ram_mb)


def detect(model: str | None, machine: str, ram_mb: int) -> Detection:
    """Pick the profile for a board.

    The device tree model wins when a profile names it; otherwise the machine architecture
    picks a generic profile. A board with less RAM than the profile assumes falls back to
    the smaller profile named in ``low_ram_fallback`` (a 1 GB Pi 4 gets Pi 3 budgets).
    """
    profiles = [load_profile(name) for name in available_profiles()]
    chosen: Profile | None = None
    reason = ""
    if model:
        for profile in profiles:
            if any(model.startswith(prefix) for prefix in profile.models):
                chosen, reason = profile, f"device tree model '{model}'"
                break
    if chosen is None:
        arch = machine.lower()
        for profile in profiles:
            if arch in profile.machines:
                chosen, reason = profile, f"machine '{machine}'"
                break
    if chosen is None:
        raise ProfileLoadError(
            f"cannot detect a profile for machine '{machine}' (model {model!r}); "
            "choose one with --profile"
        )
    seen = {chosen.name}
    while ram_mb < chosen.min_ram_mb and chosen.low_ram_fallback:
        smaller = load_profile(chosen.low_ram_fallback)
        reason += f"; {ram_mb} MB RAM is below {chosen.name}'s {chosen.min_ram_mb} MB"
        chosen = smaller
        if chosen.name in seen:  # a cycle in the shipped data must not hang start-up
            break
        seen.add(chosen.name)
    return Detection(profile=chosen, model=model, machine=machine, ram_mb=ram_mb, reason=reason)
