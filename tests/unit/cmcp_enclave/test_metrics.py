"""``cmcp_enclave.metrics``: names follow Prometheus conventions, labels stay bounded, and each
enclave has its own registry."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram, generate_latest

from cmcp_enclave.metrics import Metrics

NAME = re.compile(r"^cmcp_enclave_[a-z][a-z0-9_]*$")
UNBOUNDED = {"session_id", "call_id", "tool", "principal", "kid", "id", "session", "agent"}


def _collectors(m: Metrics) -> list[Counter | Gauge | Histogram]:
    return [v for v in vars(m).values() if isinstance(v, (Counter, Gauge, Histogram))]


def test_names_follow_prometheus_conventions() -> None:
    m = Metrics()
    families = {f.name: f.type for f in m.registry.collect()}
    assert len(families) == len(_collectors(m)) == 7
    for name, kind in families.items():
        assert NAME.match(name), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if kind == "gauge":
            assert not name.endswith("_total"), name
    exposition = generate_latest(m.registry).decode()
    assert "cmcp_enclave_decisions_total" in exposition  # counters are exposed with _total


def test_labels_are_bounded() -> None:
    for collector in _collectors(Metrics()):
        labels = set(collector._labelnames)
        assert not labels & UNBOUNDED, (collector, labels)


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # a shared registry would raise "Duplicated timeseries" here
    a.decisions.labels(decision="allow", effective="allow", mode="enforce").inc()
    a.decision_seconds.observe(0.001)
    sample = ("cmcp_enclave_decisions_total", {"decision": "allow", "effective": "allow", "mode": "enforce"})
    assert a.registry.get_sample_value(*sample) == 1.0
    assert b.registry.get_sample_value(*sample) is None
    assert a.registry.get_sample_value("cmcp_enclave_decision_seconds_count") == 1.0
    assert b.registry.get_sample_value("cmcp_enclave_decision_seconds_count") == 0.0


def test_decision_latency_buckets_are_sub_second_and_increasing() -> None:
    buckets = Metrics().decision_seconds._upper_bounds
    assert buckets == sorted(buckets)
    assert buckets[0] <= 0.0001 and buckets[-1] == float("inf") and buckets[-2] <= 1
