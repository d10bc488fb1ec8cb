"""``lattice-edge keys generate``: new nkeys (seeds written 0600)."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.common import echo_json, json_option
from agent.identity.keys import KeyKind

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Generate nkeys: seeds and their public keys.

    Kinds: operator, account (actor issuers), user, server, cluster (invocation signers)
    and module.
    """


@keys.command("generate")
@click.argument("kind", type=click.Choice([k.name.lower() for k in KeyKind]))
@click.option(
    "-o",
    "--output",
    default=None,
    help="Seed file to write (default ./KIND.nk, mode 0600); '-' prints the seed on stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing seed file.")
@json_option
def keys_generate(kind: str, output: str | None, force: bool, as_json: bool) -> None:
    """Make a new key of KIND; print its public key.

    The seed goes to a file with mode 0600, or to stdout with '-o -' (then the public
    key goes to stderr, unless --json prints both).

    \b
    Examples:
      lattice-edge keys generate account -o issuer.nk
      lattice-edge keys generate cluster -o cluster.nk --json

    \b
    JSON keys: kind, public_key, seed_file, seed
    """
    from agent.errors import ConfigError
    from agent.identity.keys import generate, write_seed_file

    key = generate(KeyKind.from_name(kind))
    to_stdout = output == "-"
    target = None if to_stdout else Path(output or f"{kind}.nk")
    if target is not None:
        if target.exists() and not force:
            raise ConfigError(f"{target} exists; pass --force to overwrite it")
        write_seed_file(target, key)
    if as_json:
        echo_json(
            {
                "kind": kind,
                "public_key": key.public_key,
                "seed_file": str(target) if target is not None else None,
                "seed": key.seed if to_stdout else None,
            }
        )
    elif to_stdout:
        click.echo(key.seed)
        click.echo(key.public_key, err=True)
    else:
        click.echo(key.public_key)
