"""Plain-text renderings of the reports the CLI prints (``status``, ``actor inspect``).

Kept apart from the click layer so they can be tested and reused without it.
"""

from __future__ import annotations

import time
from typing import Any

from agent.logs import escape

__all__ = ["format_inspect", "format_status"]


def _yes(flag: object) -> str:
    return "up" if flag else "down"


def format_status(report: dict[str, Any]) -> str:
    """The human-readable ``lattice-edge status`` report."""
    agent, leaf, upstream, device = (
        report["agent"], report["leaf"], report["upstream"], report["device"]
    )  # fmt: skip
    lines = [
        f"agent    : {_yes(agent['up'])}" + (f" (pid {agent['pid']})" if agent["pid"] else ""),
        f"host id  : {agent['host_id'] or '-'}",
        f"leaf     : {_yes(leaf['up'])} {leaf.get('version') or ''} at {agent['client_url']}",
    ]
    binary = leaf.get("binary")
    if binary:
        lines.append(f"nats-srv : {binary.get('version') or '?'} ({binary.get('path')}, "
                     f"{binary.get('chosen')})")  # fmt: skip
    if upstream["configured"]:
        state = "connected" if upstream["connected"] else "not connected"
        lines.append(f"upstream : {state} ({', '.join(upstream['configured'])})")
    else:
        lines.append("upstream : none configured (standalone)")
    mqtt = leaf.get("mqtt")
    if mqtt:
        lines.append(f"mqtt     : {mqtt['listen']}, {mqtt['connections']} connection(s)")
        for client in mqtt["clients"]:
            # An MQTT client picks its own id: escape it, like anything remote in a log.
            lines.append(
                f"mqtt     : {escape(str(client['user'] or '-'))} "
                f"(client {escape(str(client['client_id']))}) "
                f"from {client['address']}, {client['in_msgs']} in / {client['out_msgs']} out"
            )
    credentials = report.get("credentials")
    if credentials:
        lines.append(f"credentials: {_credentials(credentials)}")
    for actor in report.get("actors", []):
        lines.append(f"actor    : {actor['id']} {actor['name']} x{actor['instances']}")
    health = report.get("health") or {}
    if health and not health.get("state_saved", True):
        lines.append(f"state    : NOT SAVED, serving from memory ({health.get('state_error')})")
    for failed in health.get("restore_failed", []):
        lines.append(f"actor    : {failed['actor_ref']} not restored: {failed['error']}")
    for sub in health.get("subscriptions", []):
        counts = (
            f" {', '.join(sub['subjects'])}: {sub['delivered']} delivered, {sub['dropped']} "
            f"dropped, {sub['errors']} errors"
            if "subjects" in sub
            else ""
        )
        lines.append(f"messages : {sub['actor_id']} {sub['state']}{counts}")
    lines += _outbox_lines(report.get("forward"))
    temperature = device["temperature_c"]
    load = " ".join(f"{x:.2f}" for x in device["load_average"])
    lines += [
        f"profile  : {report['profile']}",
        f"memory   : {device['memory_available_mb']} MB free of {device['memory_total_mb']} MB",
        f"cpu      : {device['cpu_percent']}%  load {load}",
        f"disk     : {device['disk_free_mb']} MB free ({device['disk_percent']}% used)",
        f"temp     : {f'{temperature:.1f} °C' if temperature is not None else 'n/a'}",
    ]
    return "\n".join(lines)


def _credentials(credentials: dict[str, Any]) -> str:
    """``revoked``, ``expired``, or ``valid until …`` (fleet devices only)."""
    import time

    status = credentials.get("status") or "unknown"
    expires = credentials.get("expires_at")
    if status == "active" and isinstance(expires, int):
        text = f"valid until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(expires))}"
    else:
        text = str(status)
    if credentials.get("error") and status != "active":
        text += f" ({credentials['error']})"
    return f"{text} (fleet {credentials.get('fleet') or '-'})"


def _outbox_lines(forward: dict[str, Any] | None) -> list[str]:
    """Store-and-forward: what waits, what was lost, and whether it is moving."""
    if not forward:
        return []
    state = forward.get("state", "?")
    if forward.get("reason"):
        state += f": {forward['reason']}"
    oldest = forward.get("oldest_age_s")
    at = forward.get("last_forwarded_at")
    last = max(0.0, time.time() - at) if isinstance(at, int | float) else None
    return [
        f"outbox   : {forward.get('waiting_messages') or 0:,} waiting "
        f"({_size(forward.get('waiting_bytes') or 0)}), oldest "
        f"{_age(oldest) if oldest is not None else '-'}; {state}",
        f"           forwarded {forward.get('forwarded', 0):,}, dropped "
        f"{forward.get('dropped', 0):,}, refused {forward.get('refused', 0):,}; last forwarded "
        + (f"{_age(last)} ago" if last is not None else "never"),
    ]


def _size(count: int) -> str:
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _age(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s" if whole else f"{seconds:.1f}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_inspect(report: dict[str, Any]) -> str:
    """The human-readable ``lattice-edge actor inspect`` report."""
    claims = report.get("claims") or {}
    memory = report.get("memory") or {}
    admitted = report.get("memory_admitted") or {}
    imports = ", ".join(f"{i['module']}.{i['name']}" for i in report.get("imports", []))
    exports = ", ".join(e["name"] for e in report.get("exports", []))
    hash_state = {True: "matches", False: "DOES NOT MATCH", None: "-"}[report.get("hash_matches")]
    verdict = report["verdict"]
    lines = [
        f"size      : {report.get('size')} bytes",
        f"name      : {claims.get('name') or '-'}",
        f"issuer    : {claims.get('issuer') or '(unsigned)'}",
        f"subject   : {claims.get('subject') or '-'}",
        f"caps      : {', '.join(claims.get('caps') or []) or '-'}",
        f"tags      : {', '.join(claims.get('tags') or []) or '-'}",
        f"rev / ver : {claims.get('rev', '-')} / {claims.get('ver') or '-'}",
        f"expires   : {claims.get('expires_iso') or 'never'}",
        f"hash      : {report.get('module_hash')} ({hash_state})",
        f"imports   : {imports or '-'}",
        f"exports   : {exports or '-'}",
        f"memory    : {memory.get('min_pages', '-')}..{memory.get('max_pages') or 'unbounded'} "
        + (
            f"pages, admitted as ..{admitted['max_pages']}"
            if "max_pages" in admitted
            else "pages (not admitted)"
        ),
        "verdict   : " + ("accepted" if verdict["accepted"] else f"rejected: {verdict['reason']}"),
    ]
    lines += [f"warning   : {warning}" for warning in report.get("warnings", [])]
    return "\n".join(lines)
