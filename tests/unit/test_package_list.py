"""Every Python package in the tree is in pyproject's explicit package list: a package left
out is missing from wheels and the .deb, though an editable install hides it."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_listed() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("agent", "firmware_bridge", "profiles")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
