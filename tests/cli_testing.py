"""The one check of what a ``--json`` command printed: exactly the top-level keys its
docstring's ``JSON keys:`` line documents (``agent.cli.common.json_keys_of``).

``tests/integration/test_cli_json.py`` applies it to every ``--json`` example it runs on a
plain agent; the fleet and firmware tests, whose commands need a hub, a fleet service or an
MCU, apply it to every ``--json`` command they run (``fleet_testing.fleet_cli`` and
``enroll``, ``test_firmware_agent.firmware_cli``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from agent.cli import cli
from agent.cli.common import json_keys_of

__all__ = ["assert_documented_keys", "command_of", "documented_json"]


def command_of(words: Sequence[str]) -> click.Command:
    """The command a command line runs (``lattice-edge`` itself may be left out)."""
    command: click.Command = cli
    for word in words[1:] if words and words[0] == "lattice-edge" else words:
        if not isinstance(command, click.Group):
            break
        if word in command.commands:
            command = command.commands[word]
        elif not word.startswith("-"):
            raise AssertionError(f"{' '.join(words)!r}: no command {word!r}")
    assert not isinstance(command, click.Group), f"{' '.join(words)!r} names a group"
    return command


def assert_documented_keys(words: Sequence[str], output: Any) -> None:
    """``output`` (parsed JSON) has the keys the command's docstring lists, no more, no less."""
    line = " ".join(words)
    documented = json_keys_of(command_of(words))
    assert documented is not None, f"{line!r}: its command documents no JSON keys"
    keys, is_list = documented
    rows = output if is_list else [output]
    assert isinstance(rows, list) and rows, f"{line!r}: {output!r}"
    for row in rows:
        assert isinstance(row, dict), f"{line!r}: {row!r}"
        assert sorted(row) == sorted(keys), (
            f"{line!r} keys differ from its docstring: printed {sorted(row)}, "
            f"documented {sorted(keys)}"
        )


def documented_json(words: Sequence[str], stdout: str) -> Any:
    """What the command printed, parsed, once its keys are checked."""
    try:
        output = json.loads(stdout)
    except ValueError:
        raise AssertionError(f"{' '.join(words)!r} did not print JSON: {stdout!r}") from None
    assert_documented_keys(words, output)
    return output
