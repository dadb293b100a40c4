"""`helm install charts/cmcp` as a user would, with the operator a real container on the real node.

The chart names the operator image by repository and digest (``imageRegistry=localhost``, the
digest of the image built in this run and imported into the node's containerd, pull policy
``IfNotPresent``); the operator gets no kubeconfig from the test: it finds the apiserver through
in-cluster configuration (the ``kubernetes`` Service via kube-proxy, the projected token and CA at
the standard service-account paths). The host's /proc shows the user and the read-only root the
chart's ``securityContext`` asks for; ``kubectl logs`` reaches the kubelet.

The release is installed and uninstalled here, before or after the chart tests that still run on the
node agent (one release per cluster: the webhook configuration's name is fixed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME
from cmcp_devkit.release import DevRelease

from .conftest import E2ECluster, release_values
from .workloads import is_ready, pods

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cmcp"
PROFILE = CHART / "ci" / "simulated-values.yaml"
REL = "cmcp"
NS = f"cmcp-real-{uuid.uuid4().hex[:6]}"
WEBHOOK_CONFIG = "cmcp-operator.cmcp.dev"


def _digest_values(cluster: E2ECluster) -> list[str]:
    """``--set`` flags naming each component's built image by repository and digest."""
    flags = ["--set", "imageRegistry=localhost"]
    for component in ("operator", "gateway", "enclave"):
        flags += ["--set", f"{component}.image.repository=cmcp-{component}",
                  "--set", f"{component}.image.digest={cluster.images[component].digest}"]
    return flags


@pytest.fixture(scope="module")
def operator_pod(cluster: E2ECluster, dev_release: DevRelease) -> Iterator[dict[str, Any]]:
    if not cluster.is_local:
        pytest.skip("the images are built and imported on the local plane only")
    kube = cluster.kube
    placement = cluster.real_pods
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    try:
        cluster.helm(
            "install", REL, str(CHART), "-n", NS, "-f", str(PROFILE), *release_values(dev_release),
            *_digest_values(cluster),
            "--set", "gateway.enabled=false",
            "--set-json", f"operator.nodeSelector={json.dumps(placement['nodeSelector'])}",
            "--set-json", f"operator.tolerations={json.dumps(placement['tolerations'])}",
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
        cluster.helm("uninstall", REL, "-n", NS, "--wait", "--timeout", "120s", check=False)
        kube.delete(f"/api/v1/namespaces/{NS}")


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
