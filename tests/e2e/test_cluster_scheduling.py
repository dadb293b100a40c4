"""RuntimeClass scheduling: the admission plugin merges the class's node selector, the scheduler obeys it."""

from __future__ import annotations

from typing import Any

import pytest

from cmcp_devkit.cluster.kube import KubeError

from .conftest import E2ECluster
from .workloads import TDX_LABEL, condition, echo_pod, wait_pod


def test_kata_tdx_pods_land_only_on_tdx_nodes(cluster: E2ECluster, namespace: str) -> None:
    kube, ns = cluster.kube, namespace
    try:
        rc = kube.get("/apis/node.k8s.io/v1/runtimeclasses/kata-qemu-tdx")
    except KubeError as exc:
        pytest.skip(f"no kata-qemu-tdx RuntimeClass on this cluster: {exc.status}")
    selector = rc["scheduling"]["nodeSelector"]
    tdx_nodes = cluster.node_names(**selector)
    if not tdx_nodes:
        pytest.skip("no node matches the kata-qemu-tdx node selector")
    if cluster.is_local:  # the placement is only meaningful when other nodes were eligible otherwise
        assert cluster.node_names() - tdx_nodes, "the local plane registers non-TDX nodes too"
    names = [f"tdx-{i}" for i in range(4)]
    for name in names:
        kube.create(f"/api/v1/namespaces/{ns}/pods", echo_pod(name, runtimeClassName="kata-qemu-tdx"))
    for name in names:
        pod = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        # RuntimeClass admission merged the class's scheduling.nodeSelector into the pod.
        assert pod["spec"]["nodeSelector"] == selector
        bound = wait_pod(
            kube, ns, name, "to be bound", lambda p: p["spec"].get("nodeName"), diag=cluster.diagnostics
        )
        assert bound["spec"]["nodeName"] in tdx_nodes


def test_runtimeclass_matching_no_node_stays_pending_with_scheduler_reason(
    cluster: E2ECluster, namespace: str
) -> None:
    kube, ns = cluster.kube, namespace
    rc_name = f"kata-nowhere-{namespace}"
    kube.create(
        "/apis/node.k8s.io/v1/runtimeclasses",
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": rc_name},
            "handler": "kata-qemu-tdx",
            "scheduling": {"nodeSelector": {TDX_LABEL: "no-such-node"}},
        },
    )
    try:
        kube.create(f"/api/v1/namespaces/{ns}/pods", echo_pod("stuck", runtimeClassName=rc_name))

        def unschedulable(p: dict[str, Any]) -> bool:
            cond = condition(p, "PodScheduled")
            return bool(cond and cond["status"] == "False" and cond.get("reason") == "Unschedulable")

        pod = wait_pod(
            kube, ns, "stuck", "to be marked Unschedulable", unschedulable, diag=cluster.diagnostics
        )
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")
        scheduled = condition(pod, "PodScheduled")
        assert scheduled is not None
        assert "node(s) didn't match Pod's node affinity/selector" in scheduled["message"]

        def failed_event() -> list[dict[str, Any]]:
            evs = kube.get(f"/api/v1/namespaces/{ns}/events", fieldSelector="involvedObject.name=stuck")[
                "items"
            ]
            return [e for e in evs if e["reason"] == "FailedScheduling"]

        events = kube.wait_for("a FailedScheduling event", failed_event, timeout=60)
        assert "didn't match Pod's node affinity/selector" in events[0]["message"]
    finally:
        kube.delete(f"/apis/node.k8s.io/v1/runtimeclasses/{rc_name}")
