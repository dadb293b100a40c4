"""Prometheus metrics for the guard (module-level: one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter

REJECTIONS = Counter("cmcp_guard_rejections_total", "tools/call requests the guard refused", ["code"])
ADMITTED = Counter("cmcp_guard_admitted_total", "tools/call requests with a valid permit")
