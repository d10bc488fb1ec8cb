"""Subjects of store-and-forward: what the outbox captures and where it goes upstream. Pure.

The outbox captures the host's own telemetry, ``lattice-edge.telemetry.{host}.>``, and the
application subjects listed in ``[forward] subjects``. Each message goes upstream to
``{upstream_prefix}.{host}.{original subject}`` (``lattice-edge.uplink.{host}.…`` by
default), which is what a fleet's device role allows a device to publish.

A forwarded subject is refused when capturing it would break something:

* its first token must be literal and must not start with ``$`` or ``_INBOX``: the
  JetStream, KV and system APIs and every reply subject live there;
* it must not overlap ``wasmbus.rpc.>`` or ``wasmbus.ctl.>``: a stream answers a request on
  a subject it captures with a PubAck, which would reach the caller as the reply;
* it must not overlap ``lattice-edge.>`` (the agent's own services; its telemetry is
  captured anyway) or the upstream prefix (the forwarder would capture its own output).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_UPSTREAM_PREFIX",
    "TELEMETRY_ROOT",
    "check_forward_subject",
    "check_subject",
    "check_upstream_prefix",
    "message_id",
    "subjects_overlap",
    "telemetry_filter",
    "upstream_filter",
    "upstream_subject",
]

TELEMETRY_ROOT = "lattice-edge.telemetry"
DEFAULT_UPSTREAM_PREFIX = "lattice-edge.uplink"
MAX_SUBJECT = 256
_NOT_IN_TOKENS = frozenset(" \t\r\n\x00\x7f")
_REQUEST_REPLY = ("wasmbus.rpc.>", "wasmbus.ctl.>")
_AGENT = "lattice-edge.>"


def check_subject(text: str, *, wildcards: bool = True) -> str:
    """``text`` if it is a valid NATS subject (wildcards only if allowed); else ValueError."""
    if not text:
        raise ValueError("a subject must not be empty")
    if len(text) > MAX_SUBJECT:
        raise ValueError(f"a subject must be at most {MAX_SUBJECT} characters")
    if any(ch in _NOT_IN_TOKENS or ord(ch) < 0x20 for ch in text):
        raise ValueError(f"'{text!r}' contains whitespace or control characters")
    tokens = text.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise ValueError(f"'{text}' has an empty token")
        wild = token in ("*", ">")
        if not wild and ("*" in token or ">" in token):
            raise ValueError(f"'{text}': '*' and '>' must be whole tokens")
        if wild and not wildcards:
            raise ValueError(f"'{text}' must not contain wildcards")
        if token == ">" and index != len(tokens) - 1:
            raise ValueError(f"'{text}': '>' must be the last token")
    return text


def subjects_overlap(first: str, second: str) -> bool:
    """True when some subject matches both patterns (``*`` one token, ``>`` the rest)."""
    a, b = first.split("."), second.split(".")
    for x, y in zip(a, b, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(a) == len(b)


def check_upstream_prefix(text: str) -> str:
    """The ``[forward] upstream_prefix``: a literal subject outside the reserved spaces."""
    check_subject(text, wildcards=False)
    if text.startswith(("$", "_INBOX")):
        raise ValueError(f"'{text}' is in a reserved namespace ('$…', '_INBOX…')")
    if any(subjects_overlap(f"{text}.>", reserved) for reserved in _REQUEST_REPLY):
        raise ValueError(f"'{text}' overlaps the lattice's request subjects")
    if subjects_overlap(f"{text}.>", f"{TELEMETRY_ROOT}.>"):
        raise ValueError(f"'{text}' overlaps {TELEMETRY_ROOT}: the outbox would capture it")
    return text


def check_forward_subject(subject: str, upstream_prefix: str = DEFAULT_UPSTREAM_PREFIX) -> str:
    """One ``[forward] subjects`` entry, or ValueError saying why it cannot be captured."""
    check_subject(subject)
    first = subject.split(".", 1)[0]
    if first in ("*", ">"):
        raise ValueError(f"'{subject}': the first token must be literal")
    if first.startswith(("$", "_INBOX")):
        raise ValueError(f"'{subject}' is in a reserved namespace ('$…', '_INBOX…')")
    for reserved in _REQUEST_REPLY:
        if subjects_overlap(subject, reserved):
            raise ValueError(
                f"'{subject}' overlaps {reserved}: requests there would get the outbox's "
                "PubAck as their reply"
            )
    if subjects_overlap(subject, _AGENT):
        raise ValueError(
            f"'{subject}' overlaps the agent's own lattice-edge.> subjects "
            f"(its telemetry, {TELEMETRY_ROOT}.<host>.>, is captured anyway)"
        )
    if subjects_overlap(subject, f"{upstream_prefix}.>"):
        raise ValueError(f"'{subject}' overlaps the upstream prefix {upstream_prefix}")
    return subject


def telemetry_filter(host_id: str) -> str:
    """``lattice-edge.telemetry.{host}.>``: the host's own telemetry, always captured."""
    return f"{TELEMETRY_ROOT}.{host_id}.>"


def upstream_subject(prefix: str, host_id: str, subject: str) -> str:
    """Where a message captured on ``subject`` is published upstream."""
    return f"{prefix}.{host_id}.{subject}"


def upstream_filter(prefix: str, host_id: str) -> str:
    """Every subject this host forwards to: ``{prefix}.{host}.>``."""
    return f"{prefix}.{host_id}.>"


def message_id(host_id: str, sequence: int) -> str:
    """The hub's ``Nats-Msg-Id`` of outbox message ``sequence``: ``{host}:{sequence}``."""
    return f"{host_id}:{sequence}"
