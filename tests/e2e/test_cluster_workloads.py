"""Workloads end to end: the scheduler binds, the real node's kubelet runs real containers from the
http-echo image built in the run, controllers and EndpointSlices follow readiness."""

from __future__ import annotations

import json
from typing import Any

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


def _script_pod(name: str, script: str, placement: dict[str, Any]) -> dict[str, Any]:
    """A one-shot real container (the http-echo image's python3) running ``script``."""
    pod = echo_pod(name, restartPolicy="Never", **placement)
    container = pod["spec"]["containers"][0]
    container["command"] = ["python3", "-c", script]
    for key in ("args", "readinessProbe", "ports"):
        container.pop(key)
    return pod


def _finished(cluster: E2ECluster, ns: str, name: str) -> str:
    """Wait for a one-shot pod to succeed; its log (through the kubelet)."""
    done = wait_pod(
        cluster.kube, ns, name, "to finish",
        lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), diag=cluster.diagnostics,
    )
    logs = cluster.kubectl("logs", "-n", ns, name).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    return logs


GET_SERVICE = """
import os, urllib.request
print(urllib.request.urlopen(os.environ["URL"], timeout=10).read().decode())
"""


def test_cluster_ip_reaches_the_ready_pods_from_the_host_and_from_a_pod(
    local_cluster: E2ECluster, namespace: str
) -> None:
    """kube-proxy (iptables) on the real node: a Service's ClusterIP answers from the host and from a
    pod on the same bridge (the reply comes back through the host, masqueraded)."""
    kube, ns = local_cluster.kube, namespace
    backends = echo_deployment("svc", 2, **local_cluster.real_pods)
    kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments", backends)
    svc = kube.create(f"/api/v1/namespaces/{ns}/services", service("svc", {"app": "svc"}))
    cluster_ip = svc["spec"]["clusterIP"]
    kube.wait_for(
        "2 ready endpoints", lambda: len(ready_endpoint_ips(kube, ns, "svc")) == 2, timeout=120,
        on_timeout=local_cluster.diagnostics,
    )
    names = {p["metadata"]["name"] for p in pods(kube, ns, "app=svc")}
    def from_the_host() -> dict[str, Any] | None:
        try:
            reply: dict[str, Any] = httpx.get(f"http://{cluster_ip}/", timeout=3).json()
        except httpx.HTTPError:  # refused until kube-proxy has synced the new Service
            return None
        return reply

    answer = kube.wait_for(
        "the ClusterIP to answer from the host", from_the_host, timeout=60,
        on_timeout=lambda: local_cluster.local.log_tail("kube-proxy") if local_cluster.local else "",
    )
    assert answer["pod"] in names
    client = _script_pod("client", GET_SERVICE, local_cluster.real_pods)
    client["spec"]["containers"][0]["env"].append({"name": "URL", "value": f"http://{cluster_ip}/from-a-pod"})
    kube.create(f"/api/v1/namespaces/{ns}/pods", client)
    reply = json.loads(_finished(local_cluster, ns, "client"))
    assert reply["pod"] in names and reply["path"] == "/from-a-pod"


IN_CLUSTER = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
token = open(f"{sa}/token").read()
auth = {"Authorization": f"Bearer {token}"}
req = urllib.request.Request(f"https://{host}:{port}/version", headers=auth)
version = json.load(urllib.request.urlopen(req, context=ctx))["gitVersion"]
print(json.dumps({"host": host, "version": version}))
"""


def test_a_real_pod_reaches_the_apiserver_through_the_kubernetes_service(
    local_cluster: E2ECluster, namespace: str
) -> None:
    """In-cluster configuration as a client library reads it: the ``kubernetes`` Service's ClusterIP
    from the environment, the CA and token from the standard service-account paths."""
    kube, ns = local_cluster.kube, namespace
    client = _script_pod("in-cluster", IN_CLUSTER, local_cluster.real_pods)
    kube.create(f"/api/v1/namespaces/{ns}/pods", client)
    reply = json.loads(_finished(local_cluster, ns, "in-cluster"))
    assert reply["host"] == kube.get("/api/v1/namespaces/default/services/kubernetes")["spec"]["clusterIP"]
    assert reply["version"] == "v1.35.4"


def test_an_image_named_by_its_digest_runs_without_a_pull(local_cluster: E2ECluster, namespace: str) -> None:
    """As a user's chart names our images: ``repository@sha256:<manifest digest>``, IfNotPresent."""
    kube, ns = local_cluster.kube, namespace
    built = local_cluster.images["test-http-echo"]
    by_digest = f"{built.reference.rsplit(':', 1)[0]}@{built.digest}"
    pod = echo_pod("pinned", **local_cluster.real_pods)
    pod["spec"]["containers"][0].update(image=by_digest, imagePullPolicy="IfNotPresent")
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
    ready = wait_pod(kube, ns, "pinned", "to be Ready", is_ready, diag=local_cluster.diagnostics)
    assert ready["spec"]["containers"][0]["image"] == by_digest
    # no registry is reachable here: Ready means the kubelet found the imported image under that name
    assert built.digest in ready["status"]["containerStatuses"][0]["imageID"]

    # Without the digest name the import adds, the same reference is not found: the kubelet pulls
    # and, with no registry, fails. (Put back afterwards for the rest of the session.)
    assert local_cluster.local is not None and local_cluster.local.real_node is not None
    ctr = local_cluster.local.real_node.ctr
    ctr.run("images", "rm", by_digest)
    try:
        pod["metadata"]["name"] = "pinned-untagged"
        kube.create(f"/api/v1/namespaces/{ns}/pods", pod)

        def pull_failed(p: dict[str, Any]) -> bool:
            waiting = ((p["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting")
            return bool(waiting and waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"))

        wait_pod(kube, ns, "pinned-untagged", "to fail its pull", pull_failed, diag=local_cluster.diagnostics)
    finally:
        ctr.run("images", "tag", "--force", built.reference, by_digest)
