"""Store-and-forward: the outbox stream on the leaf's own JetStream domain, and the
forwarder that moves it upstream exactly once, in order (``docs/store-and-forward.md``).

This package's ``__init__`` stays light: the config imports :mod:`agent.forward.subjects`,
and nothing here may pull in the NATS client at start-up.
"""
