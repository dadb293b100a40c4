"""Manifests and waits shared by the cluster tests (the http-echo test image and friends).

Why here: the same pod shapes (echo server with an HTTP readiness probe, listening on its
pod IP) appear in several tests; keeping them in one place keeps the tests about behaviour.
"""

from __future__ import annotations

from typing import Any

from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.images import VERSION

# built in the run from devkit/cmcp_devkit/cluster/http_echo.Dockerfile and imported into the node
ECHO_IMAGE = f"localhost/cmcp-test-http-echo:{VERSION}"
TDX_LABEL = "intel.feature.node.kubernetes.io/tdx"

Obj = dict[str, Any]


def echo_container(period: int = 1, failure_threshold: int = 1) -> Obj:
    """http-echo bound to $(POD_IP):8080 with a fast readiness probe on /healthz."""
    return {
        "name": "echo",
        "image": ECHO_IMAGE,
        "args": ["--listen", "$(POD_IP):8080"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": period,
            "failureThreshold": failure_threshold,
        },
    }


def echo_pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {"containers": [echo_container()], "terminationGracePeriodSeconds": 5, **spec},
    }


def echo_deployment(name: str, replicas: int, **spec: Any) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [echo_container()], "terminationGracePeriodSeconds": 5, **spec},
            },
        },
    }


def service(name: str, selector: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def condition(obj: Obj, ctype: str) -> Obj | None:
    found: Obj | None = next(
        (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), None
    )
    return found


def is_ready(pod: Obj) -> bool:
    cond = condition(pod, "Ready")
    return bool(cond and cond["status"] == "True")


def ready_endpoint_ips(kube: Kube, ns: str, service_name: str) -> set[str]:
    """Addresses the EndpointSlices of a Service mark ready (what a load balancer would use)."""
    slices = kube.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        labelSelector=f"kubernetes.io/service-name={service_name}",
    )["items"]
    out: set[str] = set()
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready"):
                out.update(ep["addresses"])
    return out


def pods(kube: Kube, ns: str, selector: str) -> list[Obj]:
    items: list[Obj] = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"]
    return items


def wait_pod(
    kube: Kube, ns: str, name: str, what: str, pred: Any, timeout: float = 90, diag: Any = None
) -> Obj:
    """Poll one pod until ``pred(pod)`` holds; returns the pod."""

    def probe() -> Obj | None:
        pod: Obj = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        return pod if pred(pod) else None

    result: Obj = kube.wait_for(f"pod {ns}/{name} {what}", probe, timeout=timeout, on_timeout=diag)
    return result
