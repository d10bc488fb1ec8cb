"""Check that the sdist and wheel ``python -m build`` made carry everything the agent needs.

    python packaging/deb/check_dist.py SOURCE_TREE DIST_DIR

Every module and data file of the import packages in the source tree (``.py``, the board
profiles ``*.toml``, the demo actor ``*.wasm``, ``py.typed``) must be in the wheel and the
sdist, the wheel must declare the ``lattice-edge`` console script, and neither may carry
the tests or this packaging directory. Exits 1 naming what is missing.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGES = ("agent", "firmware_bridge", "profiles")
SHIPPED_SUFFIXES = {".py", ".toml", ".wasm", ".typed"}
ENTRY_POINT = "lattice-edge = agent.cli:main"
REQUIRED = (
    "agent/py.typed",
    "firmware_bridge/py.typed",
    "profiles/py.typed",
    "agent/runtime/demo/echo.wasm",
)


def source_files(tree: Path) -> set[str]:
    """Package files as paths relative to the tree, without caches."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (tree / package).rglob("*"):
            if (
                path.is_file()
                and path.suffix in SHIPPED_SUFFIXES
                and "__pycache__" not in path.parts
            ):
                found.add(path.relative_to(tree).as_posix())
    return found


def problems(expected: set[str], shipped: set[str], what: str) -> list[str]:
    """What is missing from, or should not be in, one archive."""
    found = [f"{what} lacks {name}" for name in sorted(expected - shipped)]
    found += [f"{what} lacks {name}" for name in REQUIRED if name not in shipped]
    found += [
        f"{what} carries {name}"
        for name in sorted(shipped)
        if name.startswith(("tests/", "packaging/")) and what == "wheel"
    ]
    return found


def check(tree: Path, dist: Path) -> list[str]:
    """All problems with the one wheel and one sdist in ``dist``."""
    wheels = sorted(dist.glob("lattice_edge-*.whl"))
    sdists = sorted(dist.glob("lattice_edge-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist in {dist}, found {wheels + sdists}"]
    expected = source_files(tree)
    found: list[str] = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        found += problems(expected, names, "wheel")
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = wheel.read(entry_points[0]).decode() if entry_points else ""
        if ENTRY_POINT not in text:
            found.append(f"wheel does not declare the console script '{ENTRY_POINT}'")
    with tarfile.open(sdists[0]) as sdist:
        # Members are "lattice_edge-VERSION/<path>".
        names = {member.name.partition("/")[2] for member in sdist.getmembers()}
        found += problems(expected, names, "sdist")
        found += [
            f"sdist lacks {name}" for name in ("pyproject.toml", "README.md") if name not in names
        ]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    found = check(Path(argv[0]), Path(argv[1]))
    for problem in found:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not found:
        print(f"check_dist: wheel and sdist carry all {len(source_files(Path(argv[0])))} files")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
