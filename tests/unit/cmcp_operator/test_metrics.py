"""The operator's Prometheus metrics (:mod:`cmcp_operator.metrics`): conventional names, bounded
labels (never per pod or per decision), and route series that go when the route goes."""

from __future__ import annotations

import re

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from cmcp_operator import metrics

NAME = re.compile(r"cmcp_operator_[a-z][a-z0-9_]*")
DECLARED = (metrics.RECONCILES, metrics.ATTESTATIONS, metrics.ATTEST_SECONDS, metrics.ATTESTED_PODS)


def _scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """The default registry as a scraper sees it: sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(prometheus_client.generate_latest().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_names_follow_prometheus_conventions() -> None:
    for metric in DECLARED:
        full = metric._name  # without the _total suffix the exposition adds to counters
        assert NAME.fullmatch(full), full
        assert metric._documentation.strip()
    assert metrics.ATTEST_SECONDS._name.endswith("_seconds")  # base unit in the name
    exposition = prometheus_client.generate_latest().decode()
    families = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    assert families["cmcp_operator_reconciles"] == "counter"  # exposed as ..._total
    assert families["cmcp_operator_attested_pods"] == "gauge"


def test_labels_are_bounded() -> None:
    """Labels are a kind, a result or a route, never a pod, a nonce or a tool call."""
    labels = {name for metric in DECLARED for name in metric._labelnames}
    assert labels == {"kind", "result", "route"}


def test_buckets_are_increasing_and_cover_the_attest_timeout() -> None:
    bounds = list(metrics.ATTEST_SECONDS._upper_bounds)
    assert bounds == sorted(bounds) and bounds[-1] == float("inf")
    assert 5.0 in bounds  # the default --attest-timeout is a bucket edge


def test_counters_count_and_forget_route_drops_its_series() -> None:
    before = metrics.RECONCILES.labels(kind="McpRoute", result="ok")._value.get()
    metrics.RECONCILES.labels(kind="McpRoute", result="ok").inc()
    series = _scrape()["cmcp_operator_reconciles_total"]
    assert ({"kind": "McpRoute", "result": "ok"}, before + 1) in series

    metrics.ATTESTED_PODS.labels(route="ns/metrics-test").set(3)
    assert ({"route": "ns/metrics-test"}, 3.0) in _scrape()["cmcp_operator_attested_pods"]
    metrics.forget_route("ns/metrics-test")
    assert all(labels != {"route": "ns/metrics-test"}
               for labels, _ in _scrape().get("cmcp_operator_attested_pods", []))
    metrics.forget_route("ns/metrics-test")  # forgetting twice (delete after delete) is harmless
    metrics.forget_route("ns/never-seen")
