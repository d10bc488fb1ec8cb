"""The whole command tree, walked: every command (also the ones added later) must have a
whole-sentence summary, examples that parse, ``--json`` with documented keys or a reason
not to, and its section in ``docs/cli.md``.

A command another branch adds fails here until it follows the conventions of
``agent/cli/common.py``; the JSON each ``--json`` example prints is checked against a
running agent in ``tests/integration/test_cli_json.py``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.cli.common import examples_of, json_keys_of
from agent.cli.docs import context_for, render, walk
from agent.fleet.tokens import new_token
from agent.identity.keys import KeyKind, generate

REPO = Path(__file__).resolve().parents[2]
COMMANDS = list(walk(cli))
LEAVES = [(path, command) for path, command in COMMANDS if not isinstance(command, click.Group)]
GROUPS = [(path, command) for path, command in COMMANDS if isinstance(command, click.Group)]

# What the examples' placeholders stand for when they are parsed (the JSON test runs them
# with real ones); an example with another upper-case word fails here.
_TOKEN = new_token("AAAAAAAAAAAA")
PLACEHOLDERS = {
    "ACCOUNT_KEY": generate(KeyKind.ACCOUNT).public_key,
    "ACTOR_KEY": generate(KeyKind.MODULE).public_key,
    "HOST_KEY": generate(KeyKind.SERVER).public_key,
    "TOKEN": str(_TOKEN),
    "TOKEN_ID": _TOKEN.token_id,
}


def _id(item: tuple[tuple[str, ...], click.Command]) -> str:
    return " ".join(item[0][1:]) or "lattice-edge"


def _summary(command: click.Command) -> str:
    return (command.help or "").strip().split("\n\n")[0].strip()


@pytest.mark.parametrize("item", COMMANDS, ids=_id)
def test_every_summary_is_a_whole_sentence_that_fits(
    item: tuple[tuple[str, ...], click.Command],
) -> None:
    path, command = item
    summary = _summary(command)
    assert summary, "no docstring"
    assert "\n" not in summary, "the summary is one line"
    assert summary.endswith("."), "the summary is a whole sentence"
    if len(path) > 1:
        # what a group's command list shows: click cuts a longer one with '...'
        assert command.get_short_help_str(limit=60) == summary


@pytest.mark.parametrize("item", GROUPS, ids=_id)
def test_every_group_lists_its_commands_uncut(item: tuple[tuple[str, ...], click.Command]) -> None:
    path, _ = item
    # what '--help' shows on an 80-column terminal: click cuts to fit the longest name
    shown = CliRunner().invoke(cli, [*path[1:], "--help"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    listing = shown.output.split("Commands:")[1]
    assert "..." not in listing, f"a summary is cut in '{' '.join(path)} --help':{listing}"


@pytest.mark.parametrize("item", LEAVES, ids=_id)
def test_every_command_has_json_or_says_why_not(
    item: tuple[tuple[str, ...], click.Command],
) -> None:
    _, command = item
    has_json = any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params)
    reason = getattr(command, "no_data_output", None)
    assert has_json != bool(reason), (
        "a command that prints data takes --json (with a 'JSON keys:' line in its docstring); "
        "one that prints none says so with @no_data_output('why')"
    )
    if has_json:
        assert json_keys_of(command), "document the --json keys ('JSON keys: a, b')"
        assert any("--json" in e.split() for e in examples_of(command)), (
            "give an example with --json (tests/integration/test_cli_json.py runs it)"
        )


@pytest.mark.parametrize("item", LEAVES, ids=_id)
def test_every_example_parses(item: tuple[tuple[str, ...], click.Command]) -> None:
    path, command = item
    examples = examples_of(command)
    assert examples, "every command has an example"
    for example in examples:
        words = shlex.split(example)
        if ">" in words:
            words = words[: words.index(">")]
        assert words[: len(path)] == list(path), f"{example!r} is not an example of {path}"
        for index, word in enumerate(words):
            if word.isupper() and len(word) > 2 and word.replace("_", "").isalpha():
                assert word in PLACEHOLDERS, f"unknown placeholder {word} in {example!r}"
                words[index] = PLACEHOLDERS[word]
        parent = context_for(cli, path[:-1])
        # parses options and arguments exactly as a run would, without running it
        command.make_context(path[-1], words[len(path) :], parent=parent)


def test_docs_cli_md_is_generated_from_the_tree() -> None:
    documented = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert documented == render(cli), (
        "docs/cli.md is out of date: .venv/bin/python -m agent.cli.docs > docs/cli.md"
    )
    for path, _ in COMMANDS:
        assert f"## `{' '.join(path)}`" in documented
