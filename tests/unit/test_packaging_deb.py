"""The Debian packaging's own tools and files: the man page generator, the sdist/wheel
check, the copyright writer and the unit file. (Building and booting the package is
``packaging/deb/build.sh`` and ``test.sh``, which ``.ci/run`` runs.)"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import click
import pytest

from agent import __version__
from agent.cli import cli

REPO = Path(__file__).resolve().parents[2]
DEB = REPO / "packaging" / "deb"


def load(name: str) -> ModuleType:
    """Import a script from packaging/deb (not a package: it must never get one)."""
    spec = importlib.util.spec_from_file_location(f"lattice_edge_deb_{name}", DEB / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_paths(
    group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from command_paths(command, click.Context(command, parent=ctx), (*path, name))


# --- the man page -------------------------------------------------------------------------


def test_man_page_has_every_command_and_option() -> None:
    page = load("manpage").render(cli, __version__, "2025-01-01")
    assert page.startswith('.TH LATTICE\\-EDGE 1 "2025-01-01"')
    root = click.Context(cli, info_name="lattice-edge", **cli.context_settings)
    paths = list(command_paths(cli, root))
    assert len(paths) > 10
    for path, command in paths:
        assert f".SS {' '.join(path)}".replace("-", "\\-") in page, path
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    assert (
                        f"\\fB{opt}".replace("-", "\\-") in page or opt.replace("-", "\\-") in page
                    ), (path, opt)
    for section in ("FILES", "ENVIRONMENT", "EXIT STATUS", "SYSTEMD SERVICE", "SEE ALSO"):
        assert f".SH {section}" in page


def test_man_page_text_cannot_inject_roff_requests() -> None:
    manpage = load("manpage")
    assert manpage.escape(".so /etc/passwd\n'br") == "\\&.so /etc/passwd\n\\&'br"
    assert manpage.escape("a\\b-c") == "a\\eb\\-c"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff (man-db) is not installed")
def test_man_page_renders_without_groff_warnings(tmp_path: Path) -> None:
    page = tmp_path / "lattice-edge.1"
    page.write_text(load("manpage").render(cli, __version__, "2025-01-01"))
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


# --- the sdist and wheel check --------------------------------------------------------------


def fake_dist(tmp_path: Path, names: set[str], *, entry_point: bool = True) -> Path:
    """A wheel and sdist holding ``names`` (contents do not matter to the check)."""
    dist = tmp_path / "dist"
    dist.mkdir()
    with zipfile.ZipFile(dist / "lattice_edge-0.1.0-py3-none-any.whl", "w") as wheel:
        for name in names:
            wheel.writestr(name, b"")
        text = "[console_scripts]\nlattice-edge = agent.cli:main\n" if entry_point else ""
        wheel.writestr("lattice_edge-0.1.0.dist-info/entry_points.txt", text)
    with tarfile.open(dist / "lattice_edge-0.1.0.tar.gz", "w:gz") as sdist:
        for name in {*names, "pyproject.toml", "README.md"}:
            info = tarfile.TarInfo(f"lattice_edge-0.1.0/{name}")
            sdist.addfile(info, io.BytesIO(b""))
    return dist


def test_dist_check_passes_a_complete_wheel_and_sdist(tmp_path: Path) -> None:
    check_dist = load("check_dist")
    files = check_dist.source_files(REPO)
    assert {"profiles/pi5.toml", "agent/runtime/demo/echo.wasm", "agent/py.typed"} <= files
    assert check_dist.check(REPO, fake_dist(tmp_path, files)) == []


def test_dist_check_names_what_is_missing(tmp_path: Path) -> None:
    check_dist = load("check_dist")
    files = check_dist.source_files(REPO) - {"profiles/pi5.toml", "agent/runtime/demo/echo.wasm"}
    files |= {"tests/unit/test_x.py"}
    problems = check_dist.check(REPO, fake_dist(tmp_path, files, entry_point=False))
    assert "wheel lacks profiles/pi5.toml" in problems
    assert "sdist lacks agent/runtime/demo/echo.wasm" in problems
    assert "wheel carries tests/unit/test_x.py" in problems
    assert any("console script" in problem for problem in problems)


# --- the copyright file ---------------------------------------------------------------------


def test_copyright_names_every_bundled_distribution() -> None:
    copyright_tool = load("copyright")
    text, taken = copyright_tool.render(Path(sys.prefix))
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format")
    assert "\nFiles: *\nCopyright: " in text
    for name in ("click", "msgpack", "nkeys", "psutil"):
        assert re.search(rf"^Comment: {name} [0-9.]+, bundled", text, re.MULTILINE), name
    # Apache-2.0 is referenced, never pasted in (lintian:
    # copyright-file-contains-full-apache-2-license).
    assert "Version 2.0, January 2004" not in text
    assert all(path.is_file() for path in taken)
    # Every continuation line of a DEP-5 field starts with a space.
    for paragraph in text.split("\n\n"):
        for line in paragraph.splitlines()[1:]:
            assert line.startswith(" ") or re.match(r"^[A-Z][A-Za-z-]+: ", line), line


# --- the unit -------------------------------------------------------------------------------


UNIT = DEB / "lattice-edge.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_the_packaged_agent_as_the_issue_says() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == [
        "/usr/bin/lattice-edge run --config /etc/lattice-edge/agent.toml"
    ]
    assert settings["Restart"] == ["on-failure"] and settings["WatchdogSec"] == ["30s"]
    assert settings["User"] == ["lattice-edge"] and settings["SupplementaryGroups"] == ["dialout"]
    assert settings["StateDirectory"] == ["lattice-edge"]
    assert settings["MemoryDenyWriteExecute"] == ["yes"]
    # The agent stops its children in order itself.
    assert settings["KillMode"] == ["mixed"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_unit_exposure_is_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for lattice-edge.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
