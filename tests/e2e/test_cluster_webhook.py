"""Admission webhooks reach pods: apiserver -> Service -> EndpointSlice -> pod IP, over TLS.

The operator's bundle-validating webhook depends on exactly this path; without kube-proxy it
works because the apiserver routes webhook calls to endpoint IPs (--enable-aggregator-routing).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cmcp_devkit.cluster.kube import KubeError
from cmcp_devkit.cluster.pki import ClusterPKI

from .conftest import E2ECluster
from .workloads import echo_container, echo_pod, is_ready, ready_endpoint_ips, service, wait_pod


def test_validating_webhook_served_by_a_pod_denies_and_allows(
    local_cluster: E2ECluster, namespace: str, tmp_path: Path
) -> None:
    kube, ns = local_cluster.kube, namespace
    svc_dns = f"hook.{ns}.svc"
    pki = ClusterPKI(tmp_path / "pki")
    serving = pki.issue("hook", svc_dns, server=True, dns=(svc_dns, f"hook.{ns}.svc.cluster.local"))
    kube.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hook-tls"},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64.b64encode(serving.cert.read_bytes()).decode(),
                "tls.key": base64.b64encode(serving.key.read_bytes()).decode(),
            },
        },
    )
    c = echo_container()
    c["args"] = [
        "--listen", "$(POD_IP):8443",
        "--tls-cert", "/etc/hook/tls/tls.crt",
        "--tls-key", "/etc/hook/tls/tls.key",
    ]  # fmt: skip
    c["ports"] = [{"name": "http", "containerPort": 8443}]
    c["readinessProbe"]["httpGet"]["scheme"] = "HTTPS"
    c["volumeMounts"] = [{"name": "tls", "mountPath": "/etc/hook/tls", "readOnly": True}]
    pod = echo_pod(
        "hook", volumes=[{"name": "tls", "secret": {"secretName": "hook-tls"}}], **local_cluster.real_pods
    )
    pod["spec"]["containers"] = [c]
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
    svc = service("hook", {"app": "hook"})
    svc["spec"]["ports"] = [{"name": "https", "port": 443, "targetPort": 8443}]
    kube.create(f"/api/v1/namespaces/{ns}/services", svc)
    ready = wait_pod(
        kube, ns, "hook", "to serve HTTPS and be Ready", is_ready, diag=local_cluster.diagnostics
    )
    kube.wait_for(
        "the webhook pod in the EndpointSlice",
        lambda: ready_endpoint_ips(kube, ns, "hook") == {ready["status"]["podIP"]},
    )

    hook_name = f"deny-forbidden.{ns}.e2e.test"
    kube.create(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": hook_name},
            "webhooks": [
                {
                    "name": hook_name,
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "clientConfig": {
                        "service": {"namespace": ns, "name": "hook", "path": "/validate", "port": 443},
                        "caBundle": base64.b64encode(pki.ca.cert.read_bytes()).decode(),
                    },
                }
            ],
        },
    )
    try:

        def cm(name: str, data: dict[str, str]) -> dict[str, object]:
            return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}

        # Webhook configuration is picked up asynchronously: poll until a denial shows up.
        def denied() -> KubeError | None:
            try:
                kube.create(f"/api/v1/namespaces/{ns}/configmaps", cm("bad", {"forbidden": "x"}))
            except KubeError as exc:
                return exc
            kube.delete(f"/api/v1/namespaces/{ns}/configmaps/bad")
            return None

        exc = kube.wait_for("the webhook to deny", denied, timeout=60, on_timeout=local_cluster.diagnostics)
        assert exc.status == 403, exc.body
        message = json.loads(exc.body)["message"]
        assert message.startswith(f'admission webhook "{hook_name}" denied the request')
        assert "http-echo webhook in hook denies data key 'forbidden'" in message
        created = kube.create(f"/api/v1/namespaces/{ns}/configmaps", cm("good", {"fine": "y"}))
        assert created["metadata"]["name"] == "good"
        with pytest.raises(KubeError):
            kube.get(f"/api/v1/namespaces/{ns}/configmaps/bad")
    finally:
        kube.delete(f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{hook_name}")
