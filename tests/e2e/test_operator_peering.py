"""Leader election through Kopf peering: two operator replicas, one acts; it hands over on exit.

The replicas are host processes (two leader-election peers of one cluster; the operator as a real
container is test_chart_real_pods.py). Their enclave pods are real: containers of the enclave image
built in this run, by digest, on the session's real node through a ``kata-qemu-tdx`` RuntimeClass
(the node's OCI hook and TSM stand-in give the enclave's real ``tdx`` provider simulated TDX
evidence of its own initdata; software-only, which the replicas accept with ``--allow-simulated``).
The webhook is off here (two URL-mode webhook servers would fight over one configuration;
in-cluster both advertise the same Service).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.crd import API_PATH
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.release import DevRelease
from cmcp_operator.render_bundle import bundle_manifest, dump

from .conftest import E2ECluster
from .workloads import is_ready, pods

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
NS = f"cmcp-peer-{uuid.uuid4().hex[:6]}"
GROUP_PATH = f"{API_PATH}/namespaces/{NS}"
TDX_CLASS = f"kata-qemu-tdx-{NS}"  # the kata-qemu-tdx handler, placed on the tainted real node
EXAMPLE_BUNDLE = REPO / "examples" / "minimal"


class Replica:
    def __init__(self, cluster: E2ECluster, log: Path, priority: int, release: DevRelease) -> None:
        argv = [str(Path(sys.executable).with_name("cmcp-operator")), "--namespace", NS,
                "--reattest-interval", "5", "--peering", "cmcp", "--priority", str(priority),
                *cluster.real_operator_flags(TDX_CLASS, release)]
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
                                     start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def kube(cluster: E2ECluster) -> Iterator[Kube]:
    if not cluster.is_local:
        pytest.skip("needs the local plane's real node (images built in the run, the TSM stand-in)")
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "-f", str(crd))
    cluster.kube.wait_for("CRDs served", lambda: _served(cluster.kube), timeout=60)
    cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    cluster.kube.create(f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings",
                        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "cmcp"}})
    with cluster.real_tdx_runtime_class(TDX_CLASS):
        try:
            yield cluster.kube
        finally:
            cluster.kube.delete(f"/api/v1/namespaces/{NS}")


def _served(kube: Kube) -> bool:
    try:
        kube.get("/apis/kopf.dev/v1/kopfpeerings")
        kube.get(f"{API_PATH}/mcproutes")
    except Exception:
        return False
    return True


def _route(kube: Kube) -> dict[str, Any]:
    return dict(kube.get(f"{GROUP_PATH}/mcproutes/echo"))


def _ready_with(kube: Kube, replicas: int) -> bool:
    r = _route(kube)
    conds = {c["type"]: c for c in r.get("status", {}).get("conditions", [])}
    return (conds.get("Ready", {}).get("status") == "True" and r["status"].get("attestedReplicas") == replicas
            and conds["Ready"].get("observedGeneration") == r["metadata"]["generation"])


def _diagnostics(cluster: E2ECluster, *replicas: Replica) -> str:
    parts = [cluster.diagnostics(), *(r.text()[-3000:] for r in replicas)]
    out = cluster.kubectl("logs", "-n", NS, "-l", "app.kubernetes.io/component=enclave", "--tail=20",
                          check=False)
    return "\n".join([*parts, f"--- enclaves ---\n{out.stdout}{out.stderr}"])


def _real_enclaves(cluster: E2ECluster, kube: Kube) -> list[dict[str, Any]]:
    """The route's Ready enclave pods, each checked to be a real container of this run's enclave image
    on the real node, serving the bundle (its own log line, through ``kubectl logs``)."""
    ready = [p for p in pods(kube, NS, "cmcp.dev/route=echo") if is_ready(p)]
    expected = load_bundle(EXAMPLE_BUNDLE).bundle_hash
    for pod in ready:
        cluster.assert_real_enclave(pod, TDX_CLASS)
        logs = cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"]).stdout
        serving = [json.loads(line) for line in logs.splitlines() if '"serving"' in line]
        assert serving and serving[0]["bundle_hash"] == expected, logs
    return ready


def test_only_the_leader_acts_and_the_standby_takes_over(cluster: E2ECluster, kube: Kube, tmp_path: Path,
                                                         real_release: DevRelease) -> None:
    peering = f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/cmcp"

    def peers(n: int) -> bool:
        return len(kube.get(peering).get("status") or {}) == n

    leader = Replica(cluster, tmp_path / "leader.log", priority=200, release=real_release)
    kube.wait_for("leader registered", lambda: peers(1), timeout=60)
    standby = Replica(cluster, tmp_path / "standby.log", priority=100, release=real_release)
    try:
        kube.wait_for("standby registered", lambda: peers(2), timeout=60)
        manifest = bundle_manifest(EXAMPLE_BUNDLE, "minimal", NS)
        cluster.kubectl("apply", "-f", "-", input=dump(manifest))
        kube.create(f"{GROUP_PATH}/mcproutes", {
            "apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "metadata": {"name": "echo"},
            "spec": {"upstream": {"url": "http://up.example/mcp"}, "policyBundleRef": {"name": "minimal"},
                     "replicas": 1, "tee": "tdx"}})
        kube.wait_for("route Ready (1 replica)", lambda: _ready_with(kube, 1), timeout=180,
                      on_timeout=lambda: _diagnostics(cluster, leader, standby))
        [first] = _real_enclaves(cluster, kube)
        assert "applied Deployment/Service" in leader.text()
        assert "applied Deployment/Service" not in standby.text()
        # Kopf starts a replica paused until peering says it is the highest live priority.
        assert "Resuming operations" not in standby.text()
        assert "cmcp_operator" not in standby.text()  # the standby touched nothing

        leader.stop()  # graceful: its peering entry goes, the standby resumes
        kube.patch(f"{GROUP_PATH}/mcproutes/echo", {"spec": {"replicas": 2}})
        kube.wait_for("standby scales the route to 2 attested pods", lambda: _ready_with(kube, 2),
                      timeout=180, on_timeout=lambda: _diagnostics(cluster, standby))
        assert "applied Deployment/Service" in standby.text()
        # the leader's enclave still serves; the standby started and attested the second one
        names = {p["metadata"]["name"] for p in _real_enclaves(cluster, kube)}
        assert len(names) == 2 and first["metadata"]["name"] in names
    finally:
        leader.stop()
        standby.stop()
