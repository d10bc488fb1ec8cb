"""The demo actor shipped with the agent: ``echo.wasm`` (source ``echo.wat``).

A hand-written waPC guest with the operations ``Echo``, ``Greet``, ``Health`` and ``Random``
(a host call to ``wasmcloud:builtin:numbergen``), signed by :data:`DEMO_ISSUER`.

:data:`DEMO_ISSUER` is a deliberately PUBLIC demo account key: its seed is committed at
``tests/fixtures/demo_issuer.nk`` so anyone can rebuild and re-sign the demo
(``tests/fixtures/build_guests.py``). Its signature therefore proves nothing about who
built a module. Only the agent's embedded default configuration trusts it, so the demo
runs out of the box; production configurations must list their own ``trusted_issuers``.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["DEMO_ISSUER", "demo_actor_bytes"]

DEMO_ISSUER = "AB2YB35FXYV3YF6DXP6H35NI4IZH4NMREFWJIEF4DQZIXF3X3MOUCPVJ"


def demo_actor_bytes() -> bytes:
    """The signed demo actor module, read from the installed package."""
    return resources.files(__name__).joinpath("echo.wasm").read_bytes()
