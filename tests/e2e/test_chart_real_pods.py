"""`helm install charts/cmcp` as a user would, with the operator a real container on the real node.

The chart names the operator image by repository and digest (``imageRegistry=localhost``, the
digest of the image built in this run and imported into the node's containerd, pull policy
``IfNotPresent``); the operator gets no kubeconfig from the test, only in-cluster configuration (the
``kubernetes`` Service via kube-proxy, the projected token and CA at the standard service-account
paths). The host's /proc shows the user and the read-only root the chart's ``securityContext`` asks
for; ``kubectl logs`` reaches the kubelet.

Then a PolicyBundle and a ``tee: tdx`` McpRoute: the operator's enclave pod runs the enclave image
(by digest) on the real node through the ``kata-qemu-tdx`` handler, whose OCI hook and TSM stand-in
give it simulated TDX evidence of its initdata; the enclave runs its real ``tdx`` provider, the
operator attests it (software-only evidence, accepted because the install allows simulated), and
``kubectl logs`` of the enclave shows its start-up. The session's real node carries the TDX and SNP
feature labels (as Node Feature Discovery would set them), so the operator's TDX node affinity
matches it; it is the only node that runs pods (the session's other node is registered-only).

The release is installed and uninstalled here, before or after the other chart tests (one release
per cluster: the webhook configuration's name is fixed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_core.bundle import load_bundle
from cmcp_core.crd import API_PATH
from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME
from cmcp_devkit.release import DevRelease
from cmcp_operator.render_bundle import bundle_manifest

from .conftest import E2ECluster, release_values
from .workloads import is_ready, pods

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cmcp"
PROFILE = CHART / "ci" / "simulated-values.yaml"
REL = "cmcp"
SUFFIX = uuid.uuid4().hex[:6]
NS = f"cmcp-real-{SUFFIX}"
APP = f"cmcp-real-apps-{SUFFIX}"
EXAMPLE_BUNDLE = ROOT / "examples" / "realistic"
BUNDLE, ROUTE = "realistic", "payments"
# kata-qemu-tdx's handler (the hook and the TSM stand-in), scheduled onto the real node by name
REAL_TDX_CLASS = f"kata-qemu-tdx-real-{SUFFIX}"




@pytest.fixture(scope="module")
def operator_pod(
    cluster: E2ECluster, real_release: DevRelease, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    kube = cluster.kube
    for ns in (NS, APP):
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    real_pods = tmp_path_factory.mktemp("values") / "real-pods.yaml"
    real_pods.write_text(yaml.safe_dump(cluster.real_chart_values(REAL_TDX_CLASS)), encoding="utf-8")
    with cluster.real_tdx_runtime_class(REAL_TDX_CLASS):
        try:
            cluster.helm(
                "install", REL, str(CHART), "-n", NS, "-f", str(PROFILE), "-f", str(real_pods),
                *release_values(real_release),
                "--set", "gateway.enabled=false",
                "--set-json", f'operator.watchNamespaces=["{APP}"]',  # namespaced (default): a Role in APP
            )

            def ready_operator() -> dict[str, Any] | None:
                found = [p for p in pods(kube, NS, "app.kubernetes.io/component=operator") if is_ready(p)]
                return found[0] if found else None

            def diag() -> str:
                logs = cluster.kubectl("logs", "-n", NS, "-l", "app.kubernetes.io/component=operator",
                                       "--tail=40", check=False)
                return f"{cluster.diagnostics()}\n--- operator ---\n{logs.stdout}{logs.stderr}"

            yield kube.wait_for("the operator pod to be Ready", ready_operator, timeout=240, on_timeout=diag)
        finally:
            for path in (f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}",
                         f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}"):
                kube.delete(path)
            cluster.helm("uninstall", REL, "-n", NS, "--wait", "--timeout", "120s", check=False)
            for ns in (NS, APP):
                kube.delete(f"/api/v1/namespaces/{ns}")


def test_the_operator_runs_from_its_image_by_digest_on_the_real_node(
    local_cluster: E2ECluster, operator_pod: dict[str, Any]
) -> None:
    assert operator_pod["spec"]["nodeName"] == REAL_NODE_NAME
    [container] = operator_pod["spec"]["containers"]
    assert container["image"] == f"localhost/cmcp-operator@{local_cluster.images['operator'].digest}"
    status = operator_pod["status"]["containerStatuses"][0]
    assert status["containerID"].startswith("containerd://")
    assert local_cluster.images["operator"].digest in status["imageID"]
    # in-cluster configuration only: the test handed the operator no kubeconfig
    assert not any(e["name"] == "KUBECONFIG" for e in container.get("env", []))


def test_the_chart_security_context_holds_in_the_host_proc(
    local_cluster: E2ECluster, operator_pod: dict[str, Any]
) -> None:
    """What the chart asks for (runAsUser 65532, readOnlyRootFilesystem) is what the kernel enforces."""
    assert local_cluster.local is not None and local_cluster.local.real_node is not None
    ctx = operator_pod["spec"]["securityContext"]
    container_ctx = operator_pod["spec"]["containers"][0]["securityContext"]
    assert (ctx["runAsUser"], container_ctx["readOnlyRootFilesystem"]) == (65532, True)
    cid = operator_pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    pid = local_cluster.local.real_node.ctr.task_pid(cid)
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65532"] * 4
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    assert gid_line.split()[1:] == ["65532"] * 4
    root = next(line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                if line.split()[4] == "/")
    assert "ro" in root[5].split(","), root
    cap_eff = next(line for line in status.splitlines() if line.startswith("CapEff:"))
    assert int(cap_eff.split()[1], 16) == 0  # capabilities: drop ALL


def test_kubectl_logs_of_the_operator_reach_the_kubelet(
    local_cluster: E2ECluster, operator_pod: dict[str, Any]
) -> None:
    name = operator_pod["metadata"]["name"]
    logs = local_cluster.kubectl("logs", "-n", NS, name).stdout
    assert logs.strip(), "the operator logs its start-up"


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def test_a_tdx_route_gets_an_attested_enclave_on_the_real_node(
    local_cluster: E2ECluster, operator_pod: dict[str, Any]
) -> None:
    cluster, kube = local_cluster, local_cluster.kube

    def diag() -> str:
        parts = [cluster.diagnostics()]
        for selector, ns in (("app.kubernetes.io/component=operator", NS),
                             ("app.kubernetes.io/component=enclave", APP)):
            out = cluster.kubectl("logs", "-n", ns, "-l", selector, "--tail=30", check=False)
            parts.append(f"--- {selector} ---\n{out.stdout}{out.stderr}")
        assert cluster.local is not None and cluster.local.real_node is not None
        hook_log = cluster.local.real_node.paths.tsm_hook_log
        parts.append(f"--- tsm hook ---\n{hook_log.read_text() if hook_log.exists() else ''}")
        return "\n".join(parts)

    cluster.kubectl("apply", "-f", "-", input=json.dumps(bundle_manifest(EXAMPLE_BUNDLE, BUNDLE, APP)))
    expected = load_bundle(EXAMPLE_BUNDLE).bundle_hash
    route = {
        "apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "metadata": {"name": ROUTE, "namespace": APP},
        "spec": {"policyBundleRef": {"name": BUNDLE}, "upstream": {"url": "http://upstream.invalid/mcp"},
                 "tee": "tdx", "replicas": 1},
    }
    kube.wait_for(
        "the PolicyBundle to be Ready",
        lambda: _cond(kube.get(f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}"), "Ready").get("status")
        == "True", timeout=90, on_timeout=diag,
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(route))

    def attested() -> dict[str, Any] | None:
        r: dict[str, Any] = kube.get(f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}")
        found = [p for p in r.get("status", {}).get("pods", []) if p.get("attested")]
        return r if _cond(r, "Ready").get("status") == "True" and found else None

    r = kube.wait_for(
        "the McpRoute to be Ready with an attested enclave", attested, timeout=240, on_timeout=diag
    )
    entry = next(p for p in r["status"]["pods"] if p["attested"])
    assert entry["reportedBundleHash"] == expected
    [enclave] = [p for p in pods(kube, APP, "app.kubernetes.io/component=enclave") if is_ready(p)]
    cluster.assert_real_enclave(enclave, REAL_TDX_CLASS)
    logs = cluster.kubectl("logs", "-n", APP, enclave["metadata"]["name"]).stdout
    serving = [json.loads(line) for line in logs.splitlines() if '"serving"' in line]
    assert serving and serving[0]["bundle_hash"] == expected, logs
