"""``lattice-edge profiles list|show|detect``: the shipped board profiles."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from agent.cli.common import echo_json, json_option

__all__ = ["profiles"]


@click.group()
def profiles() -> None:
    """List, show and detect hardware profiles.

    A profile is a board's budgets: sandbox workers, actors, memory pages, deadlines,
    JetStream limits. 'auto' (the default in the config) picks one at start-up.
    """


@profiles.command("list")
@json_option
def profiles_list(as_json: bool) -> None:
    """List the shipped profiles.

    \b
    Examples:
      lattice-edge profiles list
      lattice-edge profiles list --json

    \b
    JSON keys: [name, description]
    """
    from profiles import available_profiles, load_profile

    entries = [
        {"name": name, "description": load_profile(name).description}
        for name in available_profiles()
    ]
    if as_json:
        echo_json(entries)
        return
    for entry in entries:
        click.echo(f"{entry['name']:16} {entry['description']}")


@profiles.command("show")
@click.argument("name")
@json_option
def profiles_show(name: str, as_json: bool) -> None:
    """Show a profile's match rules and budgets.

    NAME 'auto' shows the profile this board would get.

    \b
    Examples:
      lattice-edge profiles show pi-zero-2w
      lattice-edge profiles show auto --json

    \b
    JSON keys: name, description, design_ram_mb, models, machines, min_ram_mb,
      low_ram_fallback, budgets, detected
    """
    from agent.boards import detect_board
    from agent.errors import ProfileError
    from profiles import AUTO, ProfileLoadError, available_profiles, load_profile

    detected: dict[str, Any] | None = None
    if name == AUTO:
        detection = detect_board()
        profile = detection.profile
        detected = {"reason": detection.reason}
    else:
        try:
            profile = load_profile(name)
        except ProfileLoadError as exc:
            known = ", ".join(available_profiles())
            raise ProfileError(f"unknown profile '{name}' (known: {known}, or auto)") from exc
    data = {**asdict(profile), "detected": detected}
    if as_json:
        echo_json(data)
        return
    how = f" (detected: {detected['reason']})" if detected else ""
    click.echo(f"name        : {profile.name}{how}")
    click.echo(f"description : {profile.description}")
    click.echo(f"matches     : models {data['models'] or '-'}, machines {data['machines'] or '-'}")
    for key, value in data["budgets"].items():
        click.echo(f"budget      : {key:28} {value}")


@profiles.command("detect")
@json_option
def profiles_detect(as_json: bool) -> None:
    """Detect this board's profile and say why.

    \b
    Examples:
      lattice-edge profiles detect
      lattice-edge profiles detect --json

    \b
    JSON keys: profile, reason, model, machine, ram_mb
    """
    from agent.boards import detect_board

    detection = detect_board()
    if as_json:
        echo_json(
            {
                "profile": detection.profile.name,
                "reason": detection.reason,
                "model": detection.model,
                "machine": detection.machine,
                "ram_mb": detection.ram_mb,
            }
        )
        return
    click.echo(f"{detection.profile.name}: {detection.reason}")
    click.echo(f"  model={detection.model!r} machine={detection.machine} ram={detection.ram_mb} MB")
