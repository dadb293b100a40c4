"""Leader election through Kopf peering: two operator replicas, one acts; it hands over on exit.

The webhook is off here (two URL-mode webhook servers would fight over one configuration;
in-cluster both advertise the same Service).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.crd import API_PATH
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.release import DevRelease
from cmcp_operator.render_bundle import bundle_manifest, dump

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
NS = f"cmcp-peer-{uuid.uuid4().hex[:6]}"
GROUP_PATH = f"{API_PATH}/namespaces/{NS}"


class Replica:
    def __init__(self, kubeconfig: Path, log: Path, priority: int, release: DevRelease) -> None:
        argv = [str(Path(sys.executable).with_name("cmcp-operator")), "--namespace", NS,
                "--allow-simulated", "--simulate-tee", "--reattest-interval", "5",
                "--peering", "cmcp", "--priority", str(priority),
                "--enclave-image", "ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "0" * 64, *release.argv()]
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "KUBECONFIG": str(kubeconfig)},
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
def kube(cluster: Any) -> Iterator[Kube]:
    if not cluster.is_local:
        pytest.skip("needs the local node agent (enclave images and the simulated TEE)")
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "-f", str(crd))
    cluster.kube.wait_for("CRDs served", lambda: _served(cluster.kube), timeout=60)
    cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    cluster.kube.create(f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings",
                        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "cmcp"}})
    yield cluster.kube
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


def test_only_the_leader_acts_and_the_standby_takes_over(cluster: Any, kube: Kube, tmp_path: Path,
                                                         dev_release: DevRelease) -> None:
    peering = f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/cmcp"

    def peers(n: int) -> bool:
        return len(kube.get(peering).get("status") or {}) == n

    leader = Replica(Path(cluster.kubeconfig), tmp_path / "leader.log", priority=200, release=dev_release)
    kube.wait_for("leader registered", lambda: peers(1), timeout=60)
    standby = Replica(Path(cluster.kubeconfig), tmp_path / "standby.log", priority=100, release=dev_release)
    try:
        kube.wait_for("standby registered", lambda: peers(2), timeout=60)
        manifest = bundle_manifest(REPO / "examples" / "minimal", "minimal", NS)
        cluster.kubectl("apply", "-f", "-", input=dump(manifest))
        kube.create(f"{GROUP_PATH}/mcproutes", {
            "apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "metadata": {"name": "echo"},
            "spec": {"upstream": {"url": "http://up.example/mcp"}, "policyBundleRef": {"name": "minimal"},
                     "replicas": 1, "tee": "tdx"}})
        kube.wait_for("route Ready (1 replica)", lambda: _ready_with(kube, 1), timeout=180,
                      on_timeout=lambda: leader.text()[-3000:] + standby.text()[-3000:])
        assert "applied Deployment/Service" in leader.text()
        assert "applied Deployment/Service" not in standby.text()
        # Kopf starts a replica paused until peering says it is the highest live priority.
        assert "Resuming operations" not in standby.text()
        assert "cmcp_operator" not in standby.text()  # the standby touched nothing

        leader.stop()  # graceful: its peering entry goes, the standby resumes
        kube.patch(f"{GROUP_PATH}/mcproutes/echo", {"spec": {"replicas": 2}})
        kube.wait_for("standby scales the route to 2 attested pods", lambda: _ready_with(kube, 2),
                      timeout=180, on_timeout=lambda: standby.text()[-3000:])
        assert "applied Deployment/Service" in standby.text()
    finally:
        leader.stop()
        standby.stop()
    time.sleep(0.1)
