"""Prometheus metrics (module level: one registry per process), served on their own listener."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

REQUESTS = Counter(
    "cmcp_gateway_requests_total", "JSON-RPC requests by outcome code ('ok' on success)", ["code"]
)
FRONT_DOOR_REFUSALS = Counter(
    "cmcp_gateway_front_door_refusals_total",
    "Connections refused at the HTTP front door (header_bytes, header_count, header_timeout, body_timeout)",
    ["reason"],
)
REQUEST_SECONDS = Histogram(
    "cmcp_gateway_request_duration_seconds", "Whole request handling time", buckets=_FAST
)
DECISION_SECONDS = Histogram(
    "cmcp_gateway_decision_duration_seconds",
    "Enclave Decide round trip including signature verification",
    buckets=_FAST,
)
UPSTREAM_SECONDS = Histogram(
    "cmcp_gateway_upstream_duration_seconds", "Upstream tools/call round trip", buckets=_FAST
)
