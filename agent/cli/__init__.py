"""The ``lattice-edge`` command line: a thin click layer over the library.

This package is the only place that imports click. Every command turns its options into
library calls; errors from the library (:class:`agent.errors.LatticeEdgeError`) become one
line on stderr and exit status 1, with the traceback only under ``--debug``. The commands
live in modules by topic (``service``, ``actor``, ``actor_lattice``, ``trust``, ``logs``,
``profiles``, ``keys``, ``completion``, ``fleet``, ``fleet_admin``, ``fleet_rollout``,
``enroll``, ``firmware``); ``docs/cli.md`` is generated from this tree
(``python -m agent.cli.docs``).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import click

from agent import __version__
from agent.cli import actor_lattice as _actor_lattice  # noqa: F401  (adds start/stop/list/invoke)
from agent.cli import fleet_admin as _fleet_admin  # noqa: F401  (adds token/devices/revoke)
from agent.cli import fleet_rollout as _fleet_rollout  # noqa: F401  (adds deploy/status/…)
from agent.cli.actor import actor
from agent.cli.common import DEBUG, setup_logging
from agent.cli.completion import completion
from agent.cli.enroll import enroll
from agent.cli.firmware import firmware
from agent.cli.fleet import fleet
from agent.cli.keys import keys
from agent.cli.logs import logs
from agent.cli.profiles import profiles
from agent.cli.service import demo, init, reload, run, status
from agent.cli.trust import trust
from agent.cli.uplink import uplink
from agent.errors import LatticeEdgeError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lattice-edge")
@click.option("--debug", is_flag=True, help="Debug logging and tracebacks on errors.")
def cli(debug: bool) -> None:
    """Lattice Edge: a wasmCloud lattice host for small Linux boards.

    Start with 'lattice-edge init', trust the account that signs your actors with
    'lattice-edge trust add', then 'lattice-edge run' (or the lattice-edge service).
    Commands that print data take --json.
    """
    if debug:
        DEBUG["enabled"] = True
    setup_logging("warning")  # 'run' sets the config's level; other commands stay quiet


for _command in (
    init, run, status, reload, trust, actor, logs, profiles, keys, completion, demo,
    fleet, enroll, firmware,
):  # fmt: skip
    cli.add_command(_command)
fleet.add_command(uplink)  # the cloud side of store-and-forward: fleet uplink init


# --- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="lattice-edge",
                 standalone_mode=False)  # fmt: skip
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except LatticeEdgeError as exc:
        if DEBUG["enabled"]:
            traceback.print_exc()
        click.echo(f"lattice-edge: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
