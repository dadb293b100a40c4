"""RuntimeClass scheduling: the admission plugin merges the class's node selector, the scheduler obeys it;
and the local plane's registered-only nodes (no kubelet) take no pod that does not tolerate their taint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME
from cmcp_devkit.cluster.kube import KubeError
from cmcp_devkit.cluster.registered_nodes import REGISTERED_NODE_TAINT, REGISTERED_NODE_TOLERATION

from .conftest import E2ECluster
from .workloads import TDX_LABEL, condition, echo_pod, is_ready, wait_pod

Obj = dict[str, Any]


def _registered_only(cluster: E2ECluster) -> set[str]:
    """Nodes carrying the registered-only taint (the local plane's; none on another cluster)."""
    return {n["metadata"]["name"] for n in cluster.kube.get("/api/v1/nodes")["items"]
            if REGISTERED_NODE_TAINT in n["spec"].get("taints", [])}


def _ready(node: Obj) -> bool:
    cond = condition(node, "Ready")
    return bool(cond and cond["status"] == "True")


def _unschedulable(reason_part: str) -> Any:
    def check(pod: Obj) -> bool:
        cond = condition(pod, "PodScheduled")
        return bool(cond and cond["status"] == "False" and cond.get("reason") == "Unschedulable"
                    and reason_part in cond.get("message", ""))
    return check


@pytest.fixture
def force_delete(cluster: E2ECluster, namespace: str) -> Iterator[list[str]]:
    """Pods named here are deleted at once after the test: one bound to a registered-only node has no
    kubelet to confirm a graceful deletion, so it would otherwise stay Terminating for ever."""
    names: list[str] = []
    yield names
    for name in names:
        cluster.kube.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", gracePeriodSeconds="0")


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
    if cluster.is_local:
        # The placement is only meaningful when another node was eligible otherwise: the pods tolerate
        # the plain registered-only node's taint, so only the class's node selector keeps them off it.
        plain = _registered_only(cluster) - tdx_nodes
        assert plain, "the local plane registers a non-TDX node"
        ready = all(_ready(kube.get(f"/api/v1/nodes/{n}")) for n in plain)
        assert ready, "Ready: only the selector keeps the pods off it"
        assert tdx_nodes == {REAL_NODE_NAME}
    names = [f"tdx-{i}" for i in range(4)]
    for name in names:
        kube.create(f"/api/v1/namespaces/{ns}/pods", echo_pod(
            name, runtimeClassName="kata-qemu-tdx", tolerations=[REGISTERED_NODE_TOLERATION]))
    for name in names:
        pod = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        # RuntimeClass admission merged the class's scheduling.nodeSelector into the pod.
        assert pod["spec"]["nodeSelector"] == selector
        bound = wait_pod(
            kube, ns, name, "to be bound", lambda p: p["spec"].get("nodeName"), diag=cluster.diagnostics
        )
        assert bound["spec"]["nodeName"] in tdx_nodes
    if cluster.is_local:  # and they really run there: a real container under the kata-qemu-tdx handler
        running = wait_pod(kube, ns, names[0], "to be Ready", is_ready, timeout=120, diag=cluster.diagnostics)
        assert running["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")


def test_a_pod_that_does_not_tolerate_the_registered_only_taint_is_never_bound_there(
    local_cluster: E2ECluster, namespace: str, force_delete: list[str]
) -> None:
    """The attacker: a pod that asks for the registered-only node by name. It stays Pending for the taint
    alone: the same pod tolerating the taint (the weakened node, as if registered without it) is bound
    there, where no kubelet would ever run it."""
    kube, ns = local_cluster.kube, namespace
    [plain, *_] = sorted(_registered_only(local_cluster))
    pinned = {"nodeSelector": {"kubernetes.io/hostname": plain}}
    kube.create(f"/api/v1/namespaces/{ns}/pods", echo_pod("insists", **pinned))
    pod = wait_pod(kube, ns, "insists", "to be Unschedulable for the taint",
                   _unschedulable("untolerated taint"), diag=local_cluster.diagnostics)
    assert not pod["spec"].get("nodeName") and pod["status"]["phase"] == "Pending"

    force_delete.append("tolerates")
    kube.create(f"/api/v1/namespaces/{ns}/pods",
                echo_pod("tolerates", tolerations=[REGISTERED_NODE_TOLERATION], **pinned))
    bound = wait_pod(kube, ns, "tolerates", "to be bound", lambda p: p["spec"].get("nodeName"),
                     diag=local_cluster.diagnostics)
    assert bound["spec"]["nodeName"] == plain
    assert not bound["status"].get("containerStatuses")  # bound, and nothing runs it


def test_an_ordinary_pod_runs_on_the_real_node(local_cluster: E2ECluster, namespace: str) -> None:
    """No placement at all: the untainted real node is the only node an ordinary pod can land on."""
    kube, ns = local_cluster.kube, namespace
    kube.create(f"/api/v1/namespaces/{ns}/pods", echo_pod("plain"))
    pod = wait_pod(kube, ns, "plain", "to be Ready", is_ready, timeout=120, diag=local_cluster.diagnostics)
    assert pod["spec"]["nodeName"] == REAL_NODE_NAME


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

        pod = wait_pod(
            kube, ns, "stuck", "to be marked Unschedulable", _unschedulable(""), diag=cluster.diagnostics
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
