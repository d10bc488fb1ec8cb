"""The demo actor shipped with the agent: ``echo.wasm`` (source ``echo.wat``).

A hand-written waPC guest with the operations ``Echo``, ``Greet``, ``Health`` and ``Random``
(a host call to ``wasmcloud:builtin:numbergen``), signed by :data:`DEMO_ISSUER`.

:data:`DEMO_ISSUER` is a deliberately PUBLIC demo account key: its seed is committed at
``tests/fixtures/demo_issuer.nk`` so anyone can rebuild and re-sign the demo
(``tests/fixtures/build_guests.py``). Its signature therefore proves nothing about who
built a module, and no configuration trusts it: the embedded default pins this exact
module by :data:`DEMO_SHA256` instead, so the demo runs out of the box while nothing else
signed with the public seed does. Production configurations list their own
``trusted_issuers``.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["DEMO_ISSUER", "DEMO_SHA256", "demo_actor_bytes"]

DEMO_ISSUER = "AB2YB35FXYV3YF6DXP6H35NI4IZH4NMREFWJIEF4DQZIXF3X3MOUCPVJ"
# SHA-256 of echo.wasm; tests/unit check it against the shipped file (rebuilds update it).
DEMO_SHA256 = "9382143dc52234ecba82e5be4077f98b2f90b83eb51a3d41c78d65461a401d77"


def demo_actor_bytes() -> bytes:
    """The signed demo actor module, read from the installed package."""
    return resources.files(__name__).joinpath("echo.wasm").read_bytes()
