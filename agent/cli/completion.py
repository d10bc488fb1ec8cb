"""``lattice-edge completion bash|zsh|fish``: the shell completion script."""

from __future__ import annotations

import click

from agent.cli.common import no_data_output

__all__ = ["COMPLETE_VAR", "completion"]

# click's variable: `_LATTICE_EDGE_COMPLETE=bash_source lattice-edge` prints the same script
# (the .deb installs its completions that way).
COMPLETE_VAR = "_LATTICE_EDGE_COMPLETE"


@no_data_output("prints a shell script")
@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    Examples:
      lattice-edge completion bash > ~/.local/share/bash-completion/completions/lattice-edge
      lattice-edge completion zsh > "${fpath[1]}/_lattice-edge"
      lattice-edge completion fish > ~/.config/fish/completions/lattice-edge.fish
    """
    from click.shell_completion import get_completion_class

    root = ctx.find_root().command
    completer = get_completion_class(shell)
    assert completer is not None  # the choice lists only shells click supports
    click.echo(completer(root, {}, "lattice-edge", COMPLETE_VAR).source(), nl=False)
