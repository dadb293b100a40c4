"""Workloads end to end: the scheduler binds, the real node's kubelet runs real containers from the
http-echo image built in the run, controllers and EndpointSlices follow readiness."""

from __future__ import annotations

import httpx

from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME

from .conftest import E2ECluster
from .workloads import echo_deployment, echo_pod, is_ready, pods, ready_endpoint_ips, service, wait_pod


def test_deployment_available_and_endpointslice_lists_exactly_ready_pods(
    local_cluster: E2ECluster, namespace: str
) -> None:
    kube, ns = local_cluster.kube, namespace
    deployment = echo_deployment("echo", 3, **local_cluster.real_pods)
    kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)
    kube.create(f"/api/v1/namespaces/{ns}/services", service("echo", {"app": "echo"}))

    def available() -> bool:
        rs = kube.get(f"/apis/apps/v1/namespaces/{ns}/replicasets", labelSelector="app=echo")["items"]
        return len(rs) == 1 and rs[0].get("status", {}).get("availableReplicas") == 3

    kube.wait_for(
        "ReplicaSet echo to have 3 available replicas",
        available,
        timeout=120,
        on_timeout=local_cluster.diagnostics,
    )
    running = pods(kube, ns, "app=echo")
    assert len(running) == 3
    for pod in running:
        assert pod["spec"]["nodeName"] == REAL_NODE_NAME  # bound by the real scheduler, run by the kubelet
        assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
        assert pod["status"]["phase"] == "Running"
        assert is_ready(pod)
        assert pod["status"]["containerStatuses"][0]["state"].get("running")
    ips = {p["status"]["podIP"] for p in running}
    assert len(ips) == 3, "every pod has its own IP"
    kube.wait_for(
        "EndpointSlice to list the 3 ready pods",
        lambda: ready_endpoint_ips(kube, ns, "echo") == ips,
        timeout=60,
    )

    # The pods really serve on their IPs.
    victim = running[0]
    vip = victim["status"]["podIP"]
    assert httpx.get(f"http://{vip}:8080/", timeout=5).json()["pod"] == victim["metadata"]["name"]

    # Fail one pod's readiness: its probe fails, the kubelet reports Ready=False,
    # the EndpointSlice controller drops it; the others stay.
    assert httpx.post(f"http://{vip}:8080/fail-ready", timeout=5).json() == {"ready": False}
    wait_pod(
        kube,
        ns,
        victim["metadata"]["name"],
        "to turn unready",
        lambda p: not is_ready(p),
        diag=local_cluster.diagnostics,
    )
    kube.wait_for(
        "EndpointSlice to drop the unready pod",
        lambda: ready_endpoint_ips(kube, ns, "echo") == ips - {vip},
        timeout=60,
    )
    dep = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/echo")
    kube.wait_for(
        "Deployment status to count 2 ready replicas",
        lambda: (
            kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/echo")["status"].get("readyReplicas") == 2
        ),
        timeout=60,
    )
    assert dep["spec"]["replicas"] == 3

    # And back.
    httpx.post(f"http://{vip}:8080/recover-ready", timeout=5)
    kube.wait_for(
        "EndpointSlice to list the recovered pod again",
        lambda: ready_endpoint_ips(kube, ns, "echo") == ips,
        timeout=60,
    )


def test_deleted_pod_process_is_stopped_and_pod_removed(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    kube.create(f"/api/v1/namespaces/{ns}/pods", echo_pod("doomed", **local_cluster.real_pods))
    pod = wait_pod(kube, ns, "doomed", "to be Ready", is_ready, diag=local_cluster.diagnostics)
    ip = pod["status"]["podIP"]
    assert httpx.get(f"http://{ip}:8080/healthz", timeout=5).status_code == 200
    kube.delete(f"/api/v1/namespaces/{ns}/pods/doomed")

    def gone() -> bool:
        try:
            kube.get(f"/api/v1/namespaces/{ns}/pods/doomed")
        except Exception as exc:
            return getattr(exc, "status", None) == 404
        return False

    kube.wait_for(
        "the kubelet to finish the deletion",
        gone,
        timeout=60,
        on_timeout=local_cluster.diagnostics,
    )
    try:
        httpx.get(f"http://{ip}:8080/healthz", timeout=2)
        still_serving = True
    except httpx.HTTPError:
        still_serving = False
    assert not still_serving, "the pod's process must be killed on deletion"
