"""The node agent behaves like a kubelet where our components depend on it.

Env ($(VAR) expansion, fieldRef, ConfigMap/Secret refs), volumes materialised at mapped
mount paths, the pod's own ServiceAccount token, the simulated TEE measuring the pod's
initdata annotation, restart policies, and unknown images. Local plane only.
"""

from __future__ import annotations

import base64
import shlex
from typing import Any

import httpx

from cmcp_core import initdata
from cmcp_devkit.cluster.kube import Kube

from .conftest import E2ECluster
from .workloads import ECHO_IMAGE, echo_container, echo_pod, is_ready, wait_pod

INITDATA_TOML = (
    b'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\n'
    b'"cmcp.json" = \'{"bundle_hash":"sha256:e2e"}\'\n"policy.rego" = """package agent_policy\n"""\n'
)


def _get(ip: str, path: str) -> Any:
    resp = httpx.get(f"http://{ip}:8080{path}", timeout=5)
    resp.raise_for_status()
    return resp.json()


def test_env_volumes_token_and_simulated_tee(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    kube.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"mode": "enforce", "policy.cedar": "permit(principal, action, resource);"},
        },
    )
    kube.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sec"},
            "data": {"key": base64.b64encode(b"s3cr3t").decode()},
        },
    )
    container = echo_container()
    container["env"] += [
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "key"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "ECHO_COMBINED", "value": "$(MODE)@$(NODE) $$(MODE) $(UNDEFINED)"},
        {"name": "BUNDLE_DIR", "value": "/etc/cmcp/bundle"},
    ]
    container["envFrom"] = [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}]
    container["args"] += ["--fail-file", "/etc/cmcp/bundle/fail-ready"]
    container["volumeMounts"] = [
        {"name": "bundle", "mountPath": "/etc/cmcp/bundle"},
        {"name": "sec", "mountPath": "/etc/cmcp/secret", "readOnly": True},
        {"name": "info", "mountPath": "/etc/podinfo"},
        {"name": "scratch", "mountPath": "/tmp/scratch"},
    ]
    pod = echo_pod("tee", runtimeClassName="kata-qemu-tdx")
    pod["metadata"]["annotations"] = {initdata.ANNOTATION: initdata.encode_annotation(INITDATA_TOML)}
    pod["spec"]["containers"] = [container]
    pod["spec"]["volumes"] = [
        {"name": "bundle", "configMap": {"name": "cfg"}},
        {"name": "sec", "secret": {"secretName": "sec"}},
        {
            "name": "info",
            "downwardAPI": {
                "items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                ]
            },
        },
        {"name": "scratch", "emptyDir": {}},
    ]
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
    running = wait_pod(kube, ns, "tee", "to be Ready", is_ready, diag=local_cluster.diagnostics)
    ip = running["status"]["podIP"]
    env = _get(ip, "/env")
    root = env["CMCP_POD_ROOT"]

    assert env["POD_IP"] == ip and env["POD_NAME"] == "tee"
    assert env["MODE"] == "enforce" and env["SECRET"] == "s3cr3t"
    assert env["CFG_mode"] == "enforce"
    assert env["ECHO_COMBINED"] == f"enforce@{running['spec']['nodeName']} $(MODE) $(UNDEFINED)"
    assert env["BUNDLE_DIR"] == f"{root}/etc/cmcp/bundle"  # mount path rewritten to the materialised dir
    assert env["KUBERNETES_SERVICE_HOST"] and env["KUBERNETES_SERVICE_PORT"]

    assert (
        _get(ip, "/read?path=/etc/cmcp/bundle/policy.cedar")["text"] == "permit(principal, action, resource);"
    )
    assert _get(ip, "/read?path=/etc/cmcp/secret/key")["text"] == "s3cr3t"
    assert _get(ip, "/read?path=/etc/podinfo/name")["text"] == "tee"
    assert 'app="tee"' in _get(ip, "/read?path=/etc/podinfo/labels")["text"]

    # Simulated TEE: exact initdata bytes and their TDX/SNP measurements.
    assert env["CMCP_SIM_PLATFORM"] == "tdx"
    assert env["CMCP_SIM_MRCONFIGID"] == initdata.tdx_mrconfigid(INITDATA_TOML).hex()
    assert env["CMCP_SIM_HOST_DATA"] == initdata.snp_host_data(INITDATA_TOML).hex()
    assert _get(ip, f"/read?path={env['CMCP_INITDATA']}")["text"].encode() == INITDATA_TOML

    # The ServiceAccount admission plugin's projected token is the pod's own, bound identity.
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = _get(ip, f"/read?path={sa_dir}/token")["text"]
    assert _get(ip, f"/read?path={sa_dir}/namespace")["text"] == ns
    assert "BEGIN CERTIFICATE" in _get(ip, f"/read?path={sa_dir}/ca.crt")["text"]
    as_pod = Kube.with_token(local_cluster.server, local_cluster.ca_file, token)
    try:
        review = as_pod.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    finally:
        as_pod.close()
    info = review["status"]["userInfo"]
    assert info["username"] == f"system:serviceaccount:{ns}:default"
    assert info["extra"]["authentication.kubernetes.io/pod-name"] == ["tee"]
    # $KUBECONFIG carries the same identity for clients that cannot use the in-cluster paths.
    via_kubeconfig = Kube.from_kubeconfig(env["KUBECONFIG"])
    try:
        again = via_kubeconfig.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    finally:
        via_kubeconfig.close()
    assert again["status"]["userInfo"]["username"] == info["username"]


def _pod_with_command(name: str, script: str, restart: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "containers": [
                {
                    "name": "main",
                    "image": ECHO_IMAGE,
                    "command": ["python", "-c", script],
                }
            ],
        },
    }


def test_restart_policies_and_exit_codes(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    kube.create(
        f"/api/v1/namespaces/{ns}/pods", _pod_with_command("crashy", "import sys; sys.exit(3)", "Always")
    )
    kube.create(f"/api/v1/namespaces/{ns}/pods", _pod_with_command("ok-once", "print('done')", "Never"))
    kube.create(
        f"/api/v1/namespaces/{ns}/pods", _pod_with_command("fail-once", "raise SystemExit(7)", "Never")
    )

    def restarted(p: dict[str, Any]) -> bool:
        st = (p.get("status", {}).get("containerStatuses") or [{}])[0]
        return st.get("restartCount", 0) >= 1 and "terminated" in st.get("lastState", {})

    crashy = wait_pod(kube, ns, "crashy", "to be restarted", restarted, diag=local_cluster.diagnostics)
    assert crashy["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 3
    assert crashy["status"]["phase"] == "Running"

    ok = wait_pod(kube, ns, "ok-once", "to succeed", lambda p: p["status"].get("phase") == "Succeeded")
    assert ok["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    failed = wait_pod(kube, ns, "fail-once", "to fail", lambda p: p["status"].get("phase") == "Failed")
    term = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 7 and term["reason"] == "Error"
    assert failed["status"]["containerStatuses"][0]["restartCount"] == 0


def test_init_containers_run_first_and_share_empty_dir(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    # /work also prefixes this repo's venv path: the agent must not rewrite its own paths.
    write = "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text('from-init')"
    check = "import os,pathlib,sys; sys.exit(pathlib.Path(os.environ['OUT']).read_text() != 'from-init')"
    kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "staged"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [
                    {
                        "name": "init",
                        "image": ECHO_IMAGE,
                        "command": ["python", "-c", write, "/work/out.txt"],
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    }
                ],
                "containers": [
                    {
                        "name": "main",
                        "image": ECHO_IMAGE,
                        "command": ["python", "-c", check],
                        "env": [{"name": "OUT", "value": "/work/out.txt"}],
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    }
                ],
            },
        },
    )
    done = wait_pod(
        kube,
        ns,
        "staged",
        "to succeed",
        lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
        diag=local_cluster.diagnostics,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_unknown_image_fails_pod_with_clear_reason(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "nope"},
            "spec": {"containers": [{"name": "c", "image": "docker.io/library/nginx:1.27"}]},
        },
    )
    pod = wait_pod(kube, ns, "nope", "to fail", lambda p: p["status"].get("phase") == "Failed")
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"
    assert "docker.io/library/nginx:1.27" in waiting["message"]
    assert pod["status"]["reason"] == "ErrImagePull"


def test_exec_and_tcp_probes(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    c = echo_container()
    c["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    c["livenessProbe"] = {
        "exec": {"command": ["python", "-c", "import sys; sys.exit(0)"]},
        "periodSeconds": 1,
    }
    pod = echo_pod("probed")
    pod["spec"]["containers"] = [c]
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
    wait_pod(kube, ns, "probed", "to be Ready via tcpSocket", is_ready, diag=local_cluster.diagnostics)

    # A liveness exec probe that fails restarts the container.
    c2 = echo_container()
    script = "import sys; sys.exit(1)"
    c2["livenessProbe"] = {
        "exec": {"command": ["python", "-c", script]},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    pod2 = echo_pod("unlively")
    pod2["spec"]["containers"] = [c2]
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod2)
    wait_pod(
        kube,
        ns,
        "unlively",
        f"to be restarted by its liveness probe ({shlex.quote(script)})",
        lambda p: (p["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1,
        diag=local_cluster.diagnostics,
    )


def test_missing_configmap_waits_then_starts_when_created(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace
    c = echo_container()
    c["volumeMounts"] = [{"name": "late", "mountPath": "/etc/late"}]
    pod = echo_pod("patient", volumes=[{"name": "late", "configMap": {"name": "late-cfg"}}])
    pod["spec"]["containers"] = [c]
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod)

    def config_error(p: dict[str, Any]) -> bool:
        waiting = ((p["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting") or {}
        return waiting.get("reason") == "CreateContainerConfigError"

    waiting = wait_pod(kube, ns, "patient", "to report the missing ConfigMap", config_error)
    assert "late-cfg" in waiting["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert waiting["status"]["phase"] == "Pending"
    kube.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late-cfg"}, "data": {"a": "1"}},
    )
    ready = wait_pod(kube, ns, "patient", "to start once the ConfigMap exists", is_ready)
    assert _get(ready["status"]["podIP"], "/read?path=/etc/late/a")["text"] == "1"


GRPC_HEALTH_SERVER = """
import os
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
servicer = health.HealthServicer()
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
servicer.set("cmcp.Enclave", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port(os.environ["POD_IP"] + ":9090")
server.start()
server.wait_for_termination()
"""


def test_grpc_and_startup_probes(local_cluster: E2ECluster, namespace: str) -> None:
    kube, ns = local_cluster.kube, namespace

    def grpc_pod(name: str, service: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": ECHO_IMAGE,
                        "command": ["python", "-c", GRPC_HEALTH_SERVER],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "startupProbe": {
                            "tcpSocket": {"port": 9090},
                            "periodSeconds": 1,
                            "failureThreshold": 30,
                        },
                        "readinessProbe": {"grpc": {"port": 9090, "service": service}, "periodSeconds": 1},
                    }
                ]
            },
        }

    kube.create(f"/api/v1/namespaces/{ns}/pods", grpc_pod("serving", ""))
    ready = wait_pod(
        kube, ns, "serving", "to be Ready via the gRPC health probe", is_ready, diag=local_cluster.diagnostics
    )
    assert ready["status"]["containerStatuses"][0]["started"] is True
    # NOT_SERVING -> unready: without a cluster, in tests/unit/cmcp_devkit/cluster/test_node_agent.py.
