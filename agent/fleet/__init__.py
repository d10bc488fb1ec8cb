"""The cloud side of a fleet: enrollment, credential renewal, revocation and rollout.

A fleet lives in a directory made by ``lattice-edge fleet init`` (``fleet.toml`` and the
seeds of its scoped signing keys) and is served by ``lattice-edge fleet serve``, a
``nats.micro`` service next to the cloud lattice whose state is a JetStream KV bucket on
the hub. ``docs/fleet.md`` describes the trust model, the subjects and the templates.
Nothing here is imported by the agent on a device except the pure codecs
(:mod:`agent.fleet.protocol`, :mod:`agent.fleet.tokens`, :mod:`agent.fleet.subjects`).
"""
