"""The gateway's Prometheus metrics: conventional names, units in seconds, buckets for sub-ms calls."""

from __future__ import annotations

from prometheus_client import REGISTRY

from cmcp_gateway.metrics import DECISION_SECONDS, REQUEST_SECONDS, REQUESTS, UPSTREAM_SECONDS


def test_names_follow_prometheus_conventions() -> None:
    assert REQUESTS._name == "cmcp_gateway_requests" and REQUESTS._labelnames == ("code",)
    for histogram in (REQUEST_SECONDS, DECISION_SECONDS, UPSTREAM_SECONDS):
        assert histogram._name.startswith("cmcp_gateway_") and histogram._name.endswith("_duration_seconds")


def test_buckets_resolve_the_sub_millisecond_path() -> None:
    """The decision path is well under a millisecond at p50: buckets must resolve it."""
    bounds = DECISION_SECONDS._upper_bounds
    assert bounds[0] <= 0.0001 and 0.001 in bounds and bounds[-1] == float("inf")


def test_an_observation_lands_in_its_bucket() -> None:
    name = "cmcp_gateway_decision_duration_seconds_bucket"
    before = REGISTRY.get_sample_value(name, {"le": "0.0005"}) or 0.0
    DECISION_SECONDS.observe(0.0003)
    assert REGISTRY.get_sample_value(name, {"le": "0.0005"}) == before + 1
