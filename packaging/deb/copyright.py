"""Write the package's ``copyright`` file (DEP-5) for the venv it carries.

    COPYRIGHT_YEARS=2025 python packaging/deb/copyright.py [--move] VENV_ROOT > copyright

The agent itself is Apache-2.0. Every distribution installed in the venv gets its own
paragraph, named and licensed as its own metadata says, with the license texts it ships
in its ``.dist-info`` (Apache-2.0 is referenced in /usr/share/common-licenses instead),
so the file lists exactly what the package bundles on this architecture. ``--move``
deletes those license files from the venv afterwards: Debian keeps them in this file.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from importlib import metadata
from pathlib import Path

FORMAT = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
APACHE_COMMON = "/usr/share/common-licenses/Apache-2.0"
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)
# Wheel metadata spells licenses many ways; DEP-5 short names for the ones we carry.
SPELLINGS = {
    "apache software license": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "bsd license": "BSD-3-clause",
    "bsd-3-clause": "BSD-3-clause",
    "bsd": "BSD-3-clause",
    "mit license": "Expat",
    "mit": "Expat",
    "python software foundation license": "PSF-2.0",
}


def license_of(dist: metadata.Distribution) -> str:
    """A DEP-5 license short name from the distribution's metadata."""
    meta = dist.metadata
    candidates = [meta.get("License-Expression") or "", meta.get("License") or ""]
    candidates += [
        value.rsplit("::", 1)[-1].strip()
        for value in meta.get_all("Classifier") or []
        if value.startswith("License ::")
    ]
    for candidate in candidates:
        text = candidate.strip()
        if not text or len(text) > 60:  # some put the whole license text in License:
            continue
        if " OR " in text or " AND " in text:
            return text.replace(" OR ", " or ").replace(" AND ", " and ")
        return SPELLINGS.get(text.lower(), text)
    return "unknown-see-upstream-metadata"


def license_files(dist: metadata.Distribution) -> list[Path]:
    """The license, notice and authors files in the distribution's .dist-info."""
    found = []
    for entry in dist.files or []:
        if ".dist-info" in entry.parts[0] and LICENSE_FILE.match(entry.name):
            found.append(Path(str(dist.locate_file(entry))))
    return sorted(path for path in found if path.is_file())


def is_apache_text(text: str) -> bool:
    return "Apache License" in text and "Version 2.0, January 2004" in text


def dep5_text(text: str) -> str:
    """A license text as a DEP-5 continuation: one leading space, '.' for blank lines."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(f" {line}" if line else " ." for line in lines)


def files_of(dist: metadata.Distribution, site: Path, venv: Path, prefix: str) -> str:
    """The distribution's top-level files and directories as installed, for ``Files:``."""
    tops: set[str] = set()
    for entry in dist.files or []:
        where = (site / entry).resolve()
        if not where.exists():  # removed from the venv (bin/ scripts we do not ship)
            continue
        try:
            inside = where.relative_to(site.resolve())
        except ValueError:  # a script in bin/, say
            tops.add(f"{prefix}/{where.relative_to(venv.resolve()).as_posix()}")
            continue
        if inside.parts[0] != "__pycache__":
            tops.add(f"{prefix}/{site.relative_to(venv).as_posix()}/{inside.parts[0]}")
    return "\n ".join(sorted(tops))


def paragraph_of(dist: metadata.Distribution, files: str) -> str:
    author = dist.metadata.get("Author") or dist.metadata.get("Author-email") or ""
    author = author.split("<")[0].strip().strip('"') or f"the {dist.name} authors"
    texts = [path.read_text(errors="replace") for path in license_files(dist)]
    name = license_of(dist)
    body = "\n .\n".join(dep5_text(text) for text in texts if not is_apache_text(text))
    if any(is_apache_text(text) for text in texts) and "Apache-2.0" not in name:
        body = (body + "\n .\n" if body else "") + f" Apache-2.0 text: {APACHE_COMMON}"
    return (
        f"Files: {files}\n"
        f"Copyright: {author}\n"
        f"License: {name}\n" + (body + "\n" if body else "") + f"Comment: {dist.name} "
        f"{dist.version}, bundled; license text(s) from its .dist-info."
    )


def render(venv: Path) -> tuple[str, list[Path]]:
    """The copyright file's text and the license files it took in."""
    site = sorted(venv.glob("lib/python3*/site-packages"))[0]
    dists = sorted(metadata.distributions(path=[str(site)]), key=lambda d: d.name.lower())
    prefix = "/".join(venv.parts[-3:])  # usr/lib/lattice-edge, as installed
    years = os.environ.get("COPYRIGHT_YEARS") or str(datetime.date.today().year)
    paragraphs = [
        f"Format: {FORMAT}\nUpstream-Name: lattice-edge\n"
        "Comment: The package carries a Python virtual environment with the agent and the\n"
        " libraries it needs, one paragraph each below.",
        f"Files: *\nCopyright: {years} Lattice Edge contributors\nLicense: Apache-2.0",
    ]
    taken: list[Path] = []
    for dist in dists:
        if dist.name.lower().replace("_", "-") == "lattice-edge":
            continue
        paragraphs.append(paragraph_of(dist, files_of(dist, site, venv, prefix)))
        taken += license_files(dist)
    paragraphs.append(
        "License: Apache-2.0\n"
        " Licensed under the Apache License, Version 2.0. On Debian systems the full text\n"
        f" is in {APACHE_COMMON}."
    )
    return "\n\n".join(paragraphs) + "\n", taken


def main(argv: list[str]) -> int:
    move = "--move" in argv
    args = [arg for arg in argv if arg != "--move"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    text, taken = render(Path(args[0]))
    sys.stdout.write(text)
    if move:
        for path in taken:
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
