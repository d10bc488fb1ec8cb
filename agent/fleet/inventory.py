"""What a host says it runs: its ``get.{host}.inv`` reply, as the reconciler reads it. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass

from agent.fleet.deployments import ANNOTATION

__all__ = ["ActorSeen", "parse_inventory", "sha_of"]


@dataclass(frozen=True, slots=True)
class ActorSeen:
    """An actor in a host's inventory."""

    actor_id: str
    image_ref: str
    count: int
    deployment: str | None  # the deployment annotation of its instances, if any


def parse_inventory(host_id: str, data: bytes) -> tuple[dict[str, str], str, dict[str, ActorSeen]]:
    """(labels, friendly name, actors) from a ``get.{host}.inv`` reply; ValueError if it is
    not this host's inventory."""
    inventory = json.loads(data)
    if not isinstance(inventory, dict) or inventory.get("host_id") != host_id:
        raise ValueError("not this host's inventory")
    labels = inventory.get("labels")
    if not isinstance(labels, dict):
        raise ValueError("no labels")
    actors: dict[str, ActorSeen] = {}
    for item in inventory.get("actors") or []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        instances = [i for i in item.get("instances") or [] if isinstance(i, dict)]
        marks = {
            str((i.get("annotations") or {}).get(ANNOTATION))
            for i in instances
            if isinstance(i.get("annotations"), dict) and ANNOTATION in i["annotations"]
        }
        actors[item["id"]] = ActorSeen(
            actor_id=item["id"],
            image_ref=str(item.get("image_ref") or ""),
            count=len(instances),
            deployment=sorted(marks)[0] if marks else None,
        )
    return (
        {str(k): str(v) for k, v in labels.items()},
        str(inventory.get("friendly_name", "")),
        actors,
    )


def sha_of(image_ref: str) -> str | None:
    """The module digest in a content-addressed ``nats-os://…/sha256-<hex>`` reference."""
    name = image_ref.split("?", 1)[0].rsplit("/", 1)[-1]
    return name.removeprefix("sha256-") if name.startswith("sha256-") else None
