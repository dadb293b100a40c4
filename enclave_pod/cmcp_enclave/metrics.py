"""Prometheus metrics of one enclave, on their own registry (several enclaves may share a process
in tests). Labels carry only bounded values (decision, mode, code), never ids or tool names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("cmcp_enclave_decisions_total", "Decisions by outcome and mode",
                                 ["decision", "effective", "mode"], registry=self.registry)
        self.decision_seconds = Histogram(
            "cmcp_enclave_decision_seconds", "Decide latency inside the enclave (Cedar+sign+audit)",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=self.registry)
        self.active_sessions = Gauge("cmcp_enclave_active_sessions", "Open sessions",
                                     registry=self.registry)
        self.audit_entries = Counter("cmcp_enclave_audit_entries_total", "Audit entries appended",
                                     registry=self.registry)
        self.attest_requests = Counter("cmcp_enclave_attest_requests_total", "Attest calls",
                                       ["result"], registry=self.registry)
        self.sessions_closed = Counter("cmcp_enclave_sessions_closed_total", "Sessions closed",
                                       ["reason"], registry=self.registry)
        self.request_errors = Counter("cmcp_enclave_request_errors_total",
                                      "Requests refused without a decision", ["rpc", "code"],
                                      registry=self.registry)
