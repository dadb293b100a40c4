"""The guard's Prometheus metrics follow the naming conventions and count what they claim."""

from __future__ import annotations

from prometheus_client import REGISTRY

from cmcp_guard.metrics import ADMITTED, REJECTIONS


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_names_are_prometheus_style_counters() -> None:
    assert REJECTIONS._name == "cmcp_guard_rejections" and ADMITTED._name == "cmcp_guard_admitted"
    assert REJECTIONS._labelnames == ("code",)


def test_rejections_are_counted_per_code() -> None:
    before = _value("cmcp_guard_rejections_total", {"code": "PERMIT_MISSING"})
    REJECTIONS.labels(code="PERMIT_MISSING").inc()
    assert _value("cmcp_guard_rejections_total", {"code": "PERMIT_MISSING"}) == before + 1
    admitted = _value("cmcp_guard_admitted_total")
    ADMITTED.inc()
    assert _value("cmcp_guard_admitted_total") == admitted + 1
