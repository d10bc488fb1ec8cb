"""The wasmCloud 0.x ("wasmbus") lattice: subjects, control interface, CloudEvents and RPC.

The pure codecs (no I/O) live in :mod:`~agent.lattice.subjects`,
:mod:`~agent.lattice.invocation`, :mod:`~agent.lattice.events` and
:mod:`~agent.lattice.control_codec`; the modules that talk to NATS build on them.
"""
