"""``fleet deploy``: admit the module as a device would, upload it once, record it; and the
service side that serves the rollout's admin operations and runs its reconciler."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from agent.fleet import subjects
from agent.fleet.fleetdir import FleetDir
from agent.fleet.rollout import Reconciler
from agent.fleet.store import FleetStore, map_store_errors

__all__ = ["admit_for_fleet", "attach_rollout", "deploy", "stored_digest", "upload_module"]


def admit_for_fleet(fleet: FleetDir, module: bytes) -> Any:
    """Run the host's admission on ``module`` with the fleet's trusted issuers (signed
    modules only, the largest actor memory any board profile allows); ModuleError if no
    device of the fleet would run it."""
    from agent.runtime.admission import admit
    from profiles import available_profiles, load_profile

    pages = max(load_profile(name).budgets.actor_memory_pages for name in available_profiles())
    return admit(
        module, trusted_issuers=fleet.trusted_issuers, allow_unsigned=False, max_pages=pages
    )


async def upload_module(nats_client: Any, bucket: str, module: bytes) -> str:
    """Put ``module`` in the hub's object store under its digest, unless it is there."""
    from agent.fleet.deployments import object_name

    digest = hashlib.sha256(module).hexdigest()
    if await stored_digest(nats_client, bucket, object_name(digest)) == digest:
        return digest
    import nats.js.errors

    js = nats_client.jetstream()
    with map_store_errors(f"uploading the module to {bucket}"):
        try:
            store = await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:  # the fleet's first deploy makes it
            store = await js.create_object_store(bucket, description="Lattice Edge fleet actors")
        await store.put(object_name(digest), module)
    return digest


async def deploy(
    fleet: FleetDir,
    name: str,
    module: bytes,
    *,
    selector: dict[str, str],
    count: int,
    max_unavailable: int,
) -> dict[str, Any]:
    """Check, upload and record a deployment; the service's reply."""
    from agent.errors import ModuleError, UntrustedIssuerError
    from agent.fleet.admin import admin_client
    from agent.fleet.deployments import check_name

    check_name(name)
    try:
        admitted = admit_for_fleet(fleet, module)
    except ModuleError as exc:
        if isinstance(exc, UntrustedIssuerError) and exc.issuer:
            # Admission's hint ("trust add") is for one device; a fleet trusts in fleet.toml.
            raise UntrustedIssuerError(
                f"the fleet's devices would refuse this module: issuer {exc.issuer} is not in "
                f"trusted_issuers of the fleet ({fleet.path / 'fleet.toml'}; 'fleet init "
                "--trust-issuer' sets them)",
                issuer=exc.issuer,
            ) from exc
        refusal = type(exc)(f"the fleet's devices would refuse this module: {exc}")
        raise refusal from exc
    async with admin_client(fleet) as client:
        digest = await upload_module(client.nats, subjects.actor_bucket(fleet.fleet_id), module)
        claims = admitted.claims
        return await client.call(
            "deploy",
            {
                "name": name,
                "actor_id": admitted.actor_id,
                "sha256": digest,
                "module_hash": admitted.module_hash,
                "actor_name": claims.name or "" if claims else "",
                "selector": selector,
                "count": count,
                "max_unavailable": max_unavailable,
            },
            timeout=30,
        )


async def attach_rollout(
    service: Any, nats_client: Any, store: FleetStore, tasks: asyncio.TaskGroup, *, owner: str
) -> Reconciler:
    """Serve the rollout's admin operations and run its reconciler in ``tasks``."""
    from agent.fleet.deployments import RolloutAdmin

    fleet = service.fleet
    bucket = subjects.actor_bucket(fleet.fleet_id)

    async def object_digest(name: str) -> str | None:
        return await stored_digest(nats_client, bucket, name)

    admin = RolloutAdmin(
        store, bucket=bucket, js_domain=fleet.js_domain, object_digest=object_digest
    )
    for op, handler in (
        ("deploy", admin.deploy),
        ("undeploy", admin.undeploy),
        ("deployments", admin.deployments),
        ("status", admin.status),
    ):
        service.add_admin(op, handler)
    reconciler = Reconciler(
        nats_client,
        store,
        lattice=fleet.lattice,
        owner=owner,
        lease_s=fleet.rollout["lease_s"],
        retry_max_s=fleet.rollout["retry_max_s"],
    )
    await reconciler.start(tasks)
    return reconciler


async def stored_digest(nats_client: Any, bucket: str, name: str) -> str | None:
    """The hex SHA-256 of an object in the hub's object store, or None when it is absent."""
    import nats.js.errors

    with map_store_errors(f"looking up {bucket}/{name}"):
        try:
            store = await nats_client.jetstream().object_store(bucket)
            info = await store.get_info(name)
        except (
            nats.js.errors.BucketNotFoundError,
            nats.js.errors.ObjectNotFoundError,
            nats.js.errors.NotFoundError,
        ):
            return None
    digest = str(info.digest or "")
    if not digest.upper().startswith("SHA-256="):
        return None
    raw = digest.split("=", 1)[1]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
