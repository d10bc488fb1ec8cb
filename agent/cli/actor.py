"""``lattice-edge actor …``: read, check, sign and try out modules on this machine.

The commands that drive the actors of the running host through the lattice (start,
stop, list, invoke) are in :mod:`agent.cli.actor_lattice`, on the same group.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from agent.cli.common import (
    config_option,
    decode_response,
    echo_json,
    json_option,
    load_config_for,
    public_keys_option,
    read_payload,
)
from agent.identity.keys import KeyKind

__all__ = ["actor", "payload_options", "read_module"]


@click.group()
def actor() -> None:
    """Check, sign, call, start, stop and list actors.

    inspect, verify, sign and call work on module files here; start, stop, list and
    invoke drive the running agent's actors through the lattice.
    """


def read_module(path: Path) -> bytes:
    """A module file's bytes (ModuleFormatError naming the file when it cannot be read)."""
    from agent.errors import ModuleFormatError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModuleFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _trust(
    config_path: Path | None, extra: Sequence[str], allow_unsigned: bool
) -> tuple[dict[str, Any], int]:
    """Admission's trust keywords (config plus flags) and the page budget."""
    from agent.boards import resolve_board

    config = load_config_for(config_path)
    trust = {
        "trusted_issuers": tuple(dict.fromkeys([*config.trust.trusted_issuers, *extra])),
        "allow_unsigned": allow_unsigned or config.trust.allow_unsigned,
        "allow_legacy_claims": config.actors.allow_legacy_claims,
        "pinned_digests": config.actors.pinned_modules,
    }
    return trust, resolve_board(config).budgets.actor_memory_pages


def _options(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


trust_options = _options(
    config_option,
    click.option("--trust-issuer", "trust_issuers", multiple=True,
                 callback=public_keys_option(KeyKind.ACCOUNT),
                 help="Also trust this account key (adds to the config's trusted_issuers)."),
    click.option("--allow-unsigned", is_flag=True, help="Accept modules without claims."),
)  # fmt: skip

payload_options = _options(
    click.option("--payload-file", type=click.Path(dir_okay=False, path_type=Path),
                 default=None, help="Read the payload from this file."),
    click.option("--base64", "as_base64", is_flag=True, help="PAYLOAD is base64."),
    click.option("--msgpack", is_flag=True,
                 help="PAYLOAD is JSON, sent as msgpack; a msgpack reply is shown as JSON."),
)  # fmt: skip


def _inspect(
    file: Path, config_path: Path | None, trust_issuers: list[str], allow_unsigned: bool
) -> dict[str, Any]:
    from agent.runtime.admission import inspect_report

    trust, pages = _trust(config_path, trust_issuers, allow_unsigned)
    return inspect_report(read_module(file), max_pages=pages, **trust)


@actor.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@trust_options
def actor_inspect(
    file: Path,
    as_json: bool,
    config_path: Path | None,
    trust_issuers: list[str],
    allow_unsigned: bool,
) -> None:
    """Show a module's claims, hash, imports, memory and verdict.

    Exits 0 whatever the verdict, so it reads untrusted modules too ('wash claims
    inspect' does the same); 'actor verify' is the check that fails.

    \b
    Examples:
      lattice-edge actor inspect ./echo.wasm
      lattice-edge actor inspect ./echo.wasm --json

    \b
    JSON keys: size, sha256, pinned, module_hash, hash_matches, claims, imports, exports,
      memory, memory_admitted, custom_sections, unsupported_features, warnings, verdict
    """
    from agent.report import format_inspect

    report = _inspect(file, config_path, trust_issuers, allow_unsigned)
    if as_json:
        echo_json(report)
    else:
        click.echo(format_inspect(report))


@actor.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@trust_options
def actor_verify(
    file: Path,
    as_json: bool,
    config_path: Path | None,
    trust_issuers: list[str],
    allow_unsigned: bool,
) -> None:
    """Check that this host would run a module; exit 1 if not.

    Applies the same admission as the agent (claims, issuer, hash, expiry, imports,
    memory) with the config's trust settings.

    \b
    Examples:
      lattice-edge actor verify ./echo.wasm
      lattice-edge actor verify ./echo.wasm --trust-issuer ACCOUNT_KEY --json

    \b
    JSON keys: file, accepted, error, reason, actor
    """
    from agent.errors import ModuleError

    report = _inspect(file, config_path, trust_issuers, allow_unsigned)
    verdict = report["verdict"]
    claims = report.get("claims") or {}
    if as_json:
        echo_json(
            {
                "file": str(file),
                "accepted": verdict["accepted"],
                "error": verdict["error"],
                "reason": verdict["reason"],
                "actor": claims.get("subject"),
            }
        )
    elif verdict["accepted"]:
        click.echo(f"{file}: accepted ({claims.get('subject') or 'unsigned'})")
    if not verdict["accepted"]:
        if as_json:
            sys.exit(1)
        raise ModuleError(f"{file}: rejected: {verdict['reason']}")


@actor.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the signed module.",
)
@click.option(
    "--issuer-seed",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Account seed file (SA...) that signs.",
)
@click.option("--name", required=True, help="Actor name.")
@click.option("--cap", "caps", multiple=True, help="Capability contract id; repeatable.")
@click.option("--tag", "tags", multiple=True, help="Tag; repeatable.")
@click.option("--rev", type=int, default=None, help="Revision number.")
@click.option("--ver", default=None, help="Human-readable version.")
@click.option("--call-alias", default=None, help="Call alias.")
@click.option(
    "--module-seed",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Module seed file (SM...); a new module key is made when absent.",
)
@click.option(
    "--expires",
    "expires_days",
    type=click.IntRange(min=1),
    default=None,
    help="Days until the claims expire.",
)
@json_option
def actor_sign(
    file: Path,
    output: Path,
    issuer_seed: Path,
    name: str,
    caps: tuple[str, ...],
    tags: tuple[str, ...],
    rev: int | None,
    ver: str | None,
    call_alias: str | None,
    module_seed: Path | None,
    expires_days: int | None,
    as_json: bool,
) -> None:
    """Sign a module with an account key; print the module key.

    The claims are what 'wash claims sign' writes; the host runs the result when the
    account is trusted ('lattice-edge trust add').

    \b
    Examples:
      lattice-edge actor sign echo.wasm -o signed.wasm --issuer-seed issuer.nk --name Echo
      lattice-edge actor sign echo.wasm -o signed.wasm --issuer-seed issuer.nk --name Echo --json

    \b
    JSON keys: module_key, issuer, name, output, sha256
    """
    import hashlib

    from agent.fsutil import write_atomic
    from agent.identity.keys import load_seed_file
    from agent.identity.wascap import sign_module

    issuer = load_seed_file(issuer_seed, KeyKind.ACCOUNT)
    module_key = load_seed_file(module_seed, KeyKind.MODULE) if module_seed else None
    signed, claims = sign_module(
        read_module(file), issuer, name, caps=caps, tags=tags, rev=rev, ver=ver,
        call_alias=call_alias, module_key=module_key, expires_in_days=expires_days,
    )  # fmt: skip
    write_atomic(output, signed)
    if as_json:
        echo_json(
            {
                "module_key": claims.subject,
                "issuer": claims.issuer,
                "name": name,
                "output": str(output),
                "sha256": hashlib.sha256(signed).hexdigest(),
            }
        )
        return
    click.echo(claims.subject)


@actor.command("call")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("operation")
@click.argument("payload", required=False, default="")
@payload_options
@trust_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Invocation deadline in seconds (default: the profile's).",
)
@json_option
def actor_call(
    file: Path,
    operation: str,
    payload: str,
    payload_file: Path | None,
    as_base64: bool,
    msgpack: bool,
    config_path: Path | None,
    trust_issuers: list[str],
    allow_unsigned: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run one operation of a module file in a sandbox here.

    Loads FILE (after the same admission as the agent) and invokes OPERATION once with
    PAYLOAD ('-' reads stdin); the response goes to stdout as it is, the actor's log
    lines to stderr. No agent is needed.

    \b
    Examples:
      lattice-edge actor call ./echo.wasm Echo hello
      lattice-edge actor call ./echo.wasm Echo hello --json

    \b
    JSON keys: actor, operation, response, response_base64, host_calls, console
    """
    import base64

    from agent.boards import resolve_board
    from agent.runtime.oneshot import call_module

    config = load_config_for(config_path)
    trust, _ = _trust(config_path, trust_issuers, allow_unsigned)
    body = read_payload(payload, payload_file, as_base64, msgpack)
    outcome = asyncio.run(
        call_module(
            read_module(file), operation, body, budgets=resolve_board(config).budgets,
            timeout=timeout, **trust,
        )
    )  # fmt: skip
    result = outcome.result
    if as_json:
        echo_json(
            {
                "actor": outcome.module.actor_id,
                "operation": operation,
                "response": decode_response(result.response, msgpack),
                "response_base64": base64.b64encode(result.response).decode(),
                "host_calls": [
                    {"binding": c.binding, "namespace": c.namespace, "operation": c.operation,
                     "payload_base64": base64.b64encode(c.payload).decode(), "error": c.error}
                    for c in result.host_calls
                ],
                "console": list(result.console),
            }
        )  # fmt: skip
        return
    for line in result.console:
        click.echo(f"[actor] {line}", err=True)
    write_response(result.response, msgpack)


def write_response(response: bytes, msgpack: bool) -> None:
    """A response on stdout: the bytes as they are, or msgpack shown as JSON."""
    if msgpack:
        echo_json(decode_response(response, msgpack=True))
        return
    sys.stdout.buffer.write(response)
    sys.stdout.buffer.flush()
