"""``lattice-edge logs``: the agent's log, from the journal or the log file."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import click

from agent.cli.common import choose_config, config_option, no_data_output

__all__ = ["logs"]


@no_data_output("prints the agent's log lines as they are (JSON lines with [log] format = json)")
@click.command()
@config_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many of the last lines to show first.",
)
def logs(config_path: Path | None, follow: bool, lines: int) -> None:
    """Show the agent's log.

    Under systemd that is the journal (journalctl -u UNIT), else the config's [log] file.
    The running agent says where it logs; for a stopped one the config's [log] file is
    read, else the journal of lattice-edge.service.

    \b
    Examples:
      lattice-edge logs
      lattice-edge logs -f -n 200
    """
    from agent.config import Config
    from agent.logview import follow_file, journal_command, log_source, tail_file
    from agent.running import RUN_FILE, pid_alive, read_run_file

    config: Config = choose_config(config_path).config
    info = read_run_file(config.run_dir / RUN_FILE)
    if info is not None and not pid_alive(info.get("pid")):
        info = None
    source = log_source(config, info)
    if source.unit is not None:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends -f: not an error
            subprocess.run(journal_command(source.unit, lines=lines, follow=follow), check=False)
        return
    assert source.path is not None
    for line in tail_file(source.path, lines):
        click.echo(line)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            for line in follow_file(source.path):
                click.echo(line)
