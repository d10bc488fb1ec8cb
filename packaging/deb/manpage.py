"""Write the ``lattice-edge(1)`` man page from the click command tree.

    python packaging/deb/manpage.py [--version V] [--date YYYY-MM-DD] > lattice-edge.1

Every command, argument and option comes from click's own help records, so the page
cannot drift from ``--help``. The sections click knows nothing about (files, environment,
exit status, the systemd service) are written here. Plain roff with the ``man`` macros,
no dependencies beyond click.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click

NAME = "lattice-edge"

STATIC_SECTIONS = {
    "FILES": [
        (
            "/etc/lattice-edge/agent.toml",
            "The configuration of the system service, written by 'lattice-edge init' run "
            "as root. The package installs a placeholder so that dpkg keeps the file "
            "across upgrades and 'apt remove'.",
        ),
        (
            "/var/lib/lattice-edge",
            "The service's data: host keys (keys/, mode 0700), upstream credentials, "
            "desired state and the leaf node's store. Deleted only by 'apt purge'.",
        ),
        (
            "~/.config/lattice-edge/agent.toml",
            "The configuration when 'lattice-edge' runs as a normal user.",
        ),
    ],
    "ENVIRONMENT": [
        ("LATTICE_EDGE_CONFIG", "The config file to use when --config is not given."),
        (
            "LATTICE_EDGE_<SECTION>_<KEY>",
            "Overrides one config key, e.g. LATTICE_EDGE_LEAF_LISTEN=127.0.0.1:5222.",
        ),
        ("LATTICE_EDGE_DEBUG", "Set to any value for debug logging and tracebacks."),
    ],
}

DESCRIPTION = (
    "Lattice Edge turns a small Linux board into a host on a wasmCloud 0.x lattice. It "
    "runs and supervises its own nats-server leaf node, the device's local lattice, and "
    "bridges it to a cloud lattice such as NGS with a .creds file. Signed WebAssembly "
    "actors run in wasm3 inside sandbox worker processes.\n\n"
    "'lattice-edge init' writes the configuration and the host's keys, 'lattice-edge run' "
    "runs the agent in the foreground, and the other commands inspect and drive it. "
    "Every command prints its own help with --help."
)

EXIT_STATUS = [
    ("0", "Success."),
    ("1", "An error; one line on standard error says what went wrong."),
    ("2", "A usage error (unknown command or bad option)."),
    ("3", "'status': the agent is not running."),
]

SERVICE_TEXT = (
    "The Debian package runs the agent as the systemd service lattice-edge.service, as "
    "the system user lattice-edge, with its data in /var/lib/lattice-edge and its log in "
    "the journal. Initialise it with 'sudo lattice-edge init', then 'sudo systemctl "
    "start lattice-edge' and follow it with 'journalctl -u lattice-edge -f'. To use the "
    "command line against the service without sudo, add yourself to the group "
    "lattice-edge ('sudo adduser $USER lattice-edge', then log in again) and pass "
    "'--config /etc/lattice-edge/agent.toml' (or set LATTICE_EDGE_CONFIG to it)."
)


def escape(text: str) -> str:
    """Quote text for roff: backslashes, hyphens as minus signs, no leading control chars,
    anything beyond ASCII as a named Unicode glyph (groff reads its input as Latin-1)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = re.sub(r"[^\x00-\x7f]", lambda m: f"\\[u{ord(m.group()):04X}]", text)
    # A line starting with '.' or "'" would be read as a request.
    return re.sub(r"(?m)^([.'])", r"\\&\1", text)


def paragraph(text: str) -> str:
    """Collapse click's wrapped help into one roff paragraph (blank lines start new ones)."""
    text = re.sub(r"(?m)^\s*\x08\s*$", "", text)  # click's no-rewrap marker line
    blocks = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text.strip())]
    return "\n.PP\n".join(escape(block) for block in blocks if block)


def _commands(
    group: click.Group, ctx: click.Context, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command, click.Context]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub_ctx = click.Context(command, info_name=name, parent=ctx, **command.context_settings)
        yield (*path, name), command, sub_ctx
        if isinstance(command, click.Group):
            yield from _commands(command, sub_ctx, (*path, name))


def _options(command: click.Command, ctx: click.Context, *, top: bool = False) -> list[str]:
    lines: list[str] = []
    help_option = command.get_help_option(ctx)
    for param in command.get_params(ctx):
        # Arguments are in the usage line; --help is said once, for the whole command.
        if not isinstance(param, click.Option) or (param is help_option and not top):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{escape(names)}\\fR"]
        if help_text:
            lines.append(paragraph(help_text))
    return lines


def _definitions(items: list[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for term, text in items:
        lines += [".TP", f"\\fB{escape(term)}\\fR", paragraph(text)]
    return lines


def render(cli: click.Group, version: str, date: str) -> str:
    """The whole page as roff text."""
    root = click.Context(cli, info_name=NAME, **cli.context_settings)  # -h as well as --help
    summary = (cli.help or "").strip().splitlines()[0]
    _, _, description = summary.partition(": ")
    lines = [
        f'.TH {escape(NAME.upper())} 1 "{date}" "{NAME} {version}" "User Commands"',
        ".SH NAME",
        f"{escape(NAME)} \\- {escape(description or summary)}",
        ".SH SYNOPSIS",
        f"\\fB{escape(NAME)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        paragraph(DESCRIPTION),
        ".SH OPTIONS",
        *_options(cli, root, top=True),
        ".SH COMMANDS",
    ]
    for path, command, ctx in _commands(cli, root, ()):
        pieces = " ".join(command.collect_usage_pieces(ctx))
        lines += [
            f".SS {escape(' '.join(path))}",
            f"\\fB{escape(' '.join((NAME, *path)))}\\fR {escape(pieces)}",
            ".PP",
            paragraph(command.help or command.short_help or ""),
        ]
        lines += _options(command, ctx)
    for section, items in STATIC_SECTIONS.items():
        lines += [f".SH {section}", *_definitions(items)]
    lines += [".SH EXIT STATUS", *_definitions(EXIT_STATUS)]
    lines += [".SH SYSTEMD SERVICE", paragraph(SERVICE_TEXT)]
    lines += [
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.exec\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="version for the page footer")
    parser.add_argument("--date", default=None, help="date for the page footer (YYYY-MM-DD)")
    args = parser.parse_args(argv)
    # An installed agent wins; from a checkout, its own tree is used.
    sys.path.append(str(Path(__file__).resolve().parents[2]))
    from agent import __version__
    from agent.cli import cli

    date = args.date or datetime.date.today().isoformat()
    sys.stdout.write(render(cli, args.version or __version__, date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
