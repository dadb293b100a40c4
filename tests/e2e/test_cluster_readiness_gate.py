"""Readiness gates: a pod stays out of endpoints until another party sets its gate condition True.

This is the mechanism the operator's attestation gate relies on, so it must hold with the
real EndpointSlice controller and with the kubelet merging (never replacing) conditions, for a
real container on the real node.
"""

from __future__ import annotations

from typing import Any

from .conftest import E2ECluster
from .workloads import condition, echo_pod, is_ready, ready_endpoint_ips, service, wait_pod

GATE = "cmcp.e2e.test/attested"


def _set_gate(cluster: E2ECluster, ns: str, name: str, status: str) -> None:
    cluster.kube.patch(
        f"/api/v1/namespaces/{ns}/pods/{name}/status",
        {"status": {"conditions": [{"type": GATE, "status": status, "reason": "E2ETest"}]}},
        kind="strategic",
    )


def test_readiness_gate_keeps_pod_out_of_endpoints_until_true(
    local_cluster: E2ECluster, namespace: str
) -> None:
    kube, ns = local_cluster.kube, namespace
    kube.create(f"/api/v1/namespaces/{ns}/services", service("gated", {"app": "gated"}))
    gated = echo_pod("gated", readinessGates=[{"conditionType": GATE}], **local_cluster.real_pods)
    kube.create(f"/api/v1/namespaces/{ns}/pods", gated)

    def containers_ready(p: dict[str, Any]) -> bool:
        cond = condition(p, "ContainersReady")
        return bool(cond and cond["status"] == "True")

    pod = wait_pod(
        kube, ns, "gated", "containers to be ready", containers_ready, diag=local_cluster.diagnostics
    )
    ip = pod["status"]["podIP"]
    ready = condition(pod, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert ready["reason"] == "ReadinessGatesNotReady"
    assert ip not in ready_endpoint_ips(kube, ns, "gated")

    _set_gate(local_cluster, ns, "gated", "True")
    pod = wait_pod(
        kube, ns, "gated", "to become Ready once the gate is True", is_ready, diag=local_cluster.diagnostics
    )
    kube.wait_for(
        "the gated pod to join the EndpointSlice", lambda: ready_endpoint_ips(kube, ns, "gated") == {ip}
    )

    # The kubelet keeps reporting (status patches) without clobbering the gate condition.
    gate = condition(pod, GATE)
    assert gate is not None and gate["status"] == "True" and gate["reason"] == "E2ETest"

    _set_gate(local_cluster, ns, "gated", "False")
    wait_pod(kube, ns, "gated", "to drop Ready when the gate turns False", lambda p: not is_ready(p))
    kube.wait_for(
        "the pod to leave the EndpointSlice", lambda: ip not in ready_endpoint_ips(kube, ns, "gated")
    )
    final = kube.get(f"/api/v1/namespaces/{ns}/pods/gated")
    final_cr = condition(final, "ContainersReady")
    assert final_cr is not None and final_cr["status"] == "True"
