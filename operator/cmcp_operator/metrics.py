"""Prometheus metrics: counters and gauges only — never per-decision or per-pod-key data."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("cmcp_operator_reconciles_total", "Reconcile passes", ["kind", "result"])
ATTESTATIONS = Counter("cmcp_operator_attestations_total", "Pod attestations by result", ["result"])
ATTEST_SECONDS = Histogram("cmcp_operator_attestation_duration_seconds",
                           "Attest call plus appraisal, per pod",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ATTESTED_PODS = Gauge("cmcp_operator_attested_pods", "Attested enclave pods at the expected hash",
                      ["route"])


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod network
    start_http_server(port, addr=addr)


def forget_route(route: str) -> None:
    with contextlib.suppress(KeyError):
        ATTESTED_PODS.remove(route)
