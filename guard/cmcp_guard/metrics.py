"""Prometheus metrics for the guard (module-level: one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter

REJECTIONS = Counter("cmcp_guard_rejections_total", "tools/call requests the guard refused", ["code"])
ADMITTED = Counter("cmcp_guard_admitted_total", "tools/call requests with a valid permit")
FRONT_DOOR_REFUSALS = Counter(
    "cmcp_guard_front_door_refusals_total",
    "Connections refused at the HTTP front door (header_bytes, header_count, header_timeout, body_timeout)",
    ["reason"],
)
