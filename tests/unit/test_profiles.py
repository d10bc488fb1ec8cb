"""Hardware profiles: every shipped file loads, budgets are sane, detection works from
fake device-tree contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiles import (
    ProfileLoadError,
    available_profiles,
    detect,
    load_profile,
    parse_profile,
    read_board_facts,
)

BOARDS = [
    "cm4", "generic-arm64", "generic-armhf", "generic-x86_64", "pi-zero-2w", "pi3b", "pi4b",
    "pi5",
]  # fmt: skip


def test_every_board_has_a_profile() -> None:
    assert available_profiles() == BOARDS


@pytest.mark.parametrize("name", BOARDS)
def test_profiles_load_and_fit_their_board(name: str) -> None:
    profile = load_profile(name)
    budgets = profile.budgets
    assert profile.name == name
    # nats-server's memory and the sandbox workers' ceilings must fit in the RAM the
    # profile is sized for, leaving room for the OS, the agent and the page cache.
    ram_mb = profile.design_ram_mb
    assert profile.min_ram_mb <= ram_mb
    assert budgets.gomemlimit_mb + budgets.jetstream_max_memory_mb < ram_mb / 4
    assert budgets.sandbox_workers * budgets.worker_memory_limit_mb <= ram_mb * 0.6
    assert budgets.actor_memory_pages * 64 // 1024 < budgets.worker_memory_limit_mb


def test_pi_zero_is_the_tightest() -> None:
    zero = load_profile("pi-zero-2w").budgets
    for name in BOARDS:
        other = load_profile(name).budgets
        assert zero.gomemlimit_mb <= other.gomemlimit_mb
        assert zero.actor_memory_pages <= other.actor_memory_pages
        assert zero.sandbox_workers <= other.sandbox_workers


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileLoadError, match="pi4b"):
        load_profile("pi9")


def test_malformed_budget_is_named() -> None:
    data = {"name": "x", "match": {}, "budgets": {"max_actors": "many"}}
    with pytest.raises(ProfileLoadError, match="missing"):
        parse_profile(data, source="x.toml")
    good = {
        "name": "x", "match": {},
        "budgets": {k: 1 for k in load_profile("pi3b").budgets.__slots__},  # type: ignore[attr-defined]
    }  # fmt: skip
    good["budgets"]["max_actors"] = "many"
    with pytest.raises(ProfileLoadError, match="'max_actors' must be a number"):
        parse_profile(good, source="x.toml")


@pytest.mark.parametrize(
    ("model", "machine", "ram_mb", "expected"),
    [
        ("Raspberry Pi Zero 2 W Rev 1.0", "aarch64", 427, "pi-zero-2w"),
        ("Raspberry Pi 3 Model B Rev 1.2", "armv7l", 923, "pi3b"),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "aarch64", 906, "pi3b"),
        ("Raspberry Pi 4 Model B Rev 1.4", "aarch64", 7812, "pi4b"),
        ("Raspberry Pi 4 Model B Rev 1.1", "armv7l", 924, "pi3b"),  # 1 GB Pi 4
        ("Raspberry Pi 5 Model B Rev 1.0", "aarch64", 8052, "pi5"),
        ("Raspberry Pi 5 Model B Rev 1.0", "aarch64", 2010, "pi4b"),  # 2 GB Pi 5
        ("Raspberry Pi Compute Module 4 Rev 1.0", "aarch64", 3794, "cm4"),
        ("Pine64 RockPro64 v2.1", "aarch64", 3900, "generic-arm64"),
        ("Pine64 RockPro64 v2.1", "aarch64", 990, "pi3b"),
        (None, "armv7l", 2000, "generic-armhf"),
        (None, "armv6l", 480, "pi-zero-2w"),
        (None, "x86_64", 16000, "generic-x86_64"),
        (None, "x86_64", 512, "generic-x86_64"),
    ],
)
def test_detection(model: str | None, machine: str, ram_mb: int, expected: str) -> None:
    detection = detect(model, machine, ram_mb)
    assert detection.profile.name == expected
    assert detection.reason


def test_detection_gives_up_clearly_on_unknown_machines() -> None:
    with pytest.raises(ProfileLoadError, match="riscv64"):
        detect(None, "riscv64", 4000)


def test_board_facts_read_a_fake_device_tree(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\x00")
    found, machine, ram_mb = read_board_facts(model)
    assert found == "Raspberry Pi 4 Model B Rev 1.5"
    assert machine
    assert ram_mb > 0
    assert read_board_facts(tmp_path / "absent")[0] is None


def test_docs_table_matches_the_profiles() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "profiles.md").read_text()
    header = next(line for line in doc.splitlines() if line.startswith("| budget |"))
    names = [cell.strip() for cell in header.strip("|").split("|")[1:]]
    assert names == BOARDS
    for line in doc.splitlines():
        if not line.startswith("| `") or " — " not in line:
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        budget = cells[0].split("`")[1]
        for name, cell in zip(names, cells[1:], strict=True):
            assert float(cell) == getattr(load_profile(name).budgets, budget), (budget, name)
