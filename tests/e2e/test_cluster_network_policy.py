"""The chart's NetworkPolicies, enforced on the real node by kube-network-policies (nfqueue verdicts).

``LocalCluster(real_node=True, network_policy=True)`` runs the engine built from its Go module
(``cmcp_devkit.cluster.netpol``; this kernel lacks ``nft_queue``, so the node steers packets to
the engine's queue with an iptables NFQUEUE chain; every verdict is the engine's). The policies
are the chart's own, rendered by ``helm template`` from ``charts/cmcp``. The "enclave" and its
peers are pods of one static test image (``testdata/netcheck.c``), so this test does not depend
on the product images: the enclave pod carries the labels the operator gives enclave pods and
listens on the enclave's gRPC and metrics ports; every connection starts inside a peer pod
(``kubectl exec``), like an attacker's would.

Attacker cases: a pod of the release namespace without the gateway's labels, and a pod in
another namespace that copies the gateway's labels, are both refused on the gRPC port, while the
gateway-labelled pod gets through. Weakened counterparts: with the enclave policy deleted the
same outsider connection succeeds (so the refusal is the engine enforcing that policy, not a
broken network); with the engine SIGKILLed the steering stays and even the gateway is refused
(fail closed) until ``stop`` removes it.
The engine's own certificate may list pods, namespaces and policies and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_devkit.cluster import netpol
from cmcp_devkit.cluster.binaries import ensure_client_tools
from cmcp_devkit.cluster.control_plane import NETWORK_POLICY_ENGINE, REAL_NODE_NAME, LocalCluster
from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.cluster.node import host_leftovers, missing_prerequisites
from cmcp_devkit.cluster.oci import ImageFile, write_image_archive
from cmcp_devkit.release import write_dev_release
from tests.paths import ROOT

from .workloads import wait_pod

_WHY_NOT = (
    missing_prerequisites()
    or netpol.missing_prerequisites()
    or ("the real node runs on the local plane only" if os.environ.get("CMCP_E2E_KUBECONFIG") else None)
)
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

Obj = dict[str, Any]
RELEASE, NAMESPACE, TENANT = "rel", "cmcp-system", "tenant"
GRPC_PORT, METRICS_PORT = 50051, 9090  # the chart's cmcp.enclave.grpcPort / metricsPort
IMAGE = "localhost/cmcp-e2e/netcheck:1"
CONNECT_MS = "1500"  # a dropped SYN shows as "timeout" after this bound; not a performance claim
TIMINGS: dict[str, float] = {}


def _render_policies(tmp: Path) -> list[Obj]:
    """The chart's NetworkPolicies for release ``rel`` in ``cmcp-system``, as ``helm template`` gives them."""
    release = write_dev_release(tmp / "release")
    _, helm = ensure_client_tools()
    out = subprocess.run(
        [str(helm), "template", RELEASE, str(ROOT / "charts" / "cmcp"), "-n", NAMESPACE,
         "--set-file", f"release.manifests.dev={release.manifest}",
         "--set-file", f"release.keys.dev={release.key}",
         "--show-only", "templates/networkpolicies.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d and d["kind"] == "NetworkPolicy"]


def _enclave_policy(policies: list[Obj]) -> Obj:
    return next(p for p in policies if p["metadata"]["name"].endswith("-enclave"))


def _gateway_peer(enclave_policy: Obj) -> Obj:
    """The ``from`` entry naming the gateway: its namespace and pod labels, read off the chart."""
    peers = enclave_policy["spec"]["ingress"][0]["from"]
    return next(p for p in peers
                if p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway")


def _pod(name: str, labels: dict[str, str], args: list[str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": REAL_NODE_NAME,  # the engine guards the real node's pods
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "args": args,
                "securityContext": {
                    "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True,
                    "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }


class Net:
    """The cluster, the enclave pod's IP and the probes from inside peer pods."""

    def __init__(self, cluster: LocalCluster, kube: Kube, enclave_ip: str, policy: Obj) -> None:
        self.cluster, self.kube, self.enclave_ip, self.policy = cluster, kube, enclave_ip, policy

    def connect(self, namespace: str, pod: str, port: int) -> str:
        """What a TCP connect from inside ``pod`` to the enclave's ``port`` gives: "open PORT",
        "timeout" (the engine dropped the SYN), "refused" or "error ...". """
        proc = self.cluster.kubectl(
            "exec", "-n", namespace, pod, "--",
            "/netcheck", "connect", self.enclave_ip, str(port), CONNECT_MS, check=False,
        )
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            raise AssertionError(f"kubectl exec {namespace}/{pod} failed: {proc.returncode} {proc.stderr}")
        return proc.stdout.strip()

    def eventually(self, namespace: str, pod: str, port: int, want: str, timeout: float = 60) -> str:
        """Probe until the answer is ``want`` (the engine learns pods and policies from watches)."""
        result = self.kube.wait_for(
            f"{namespace}/{pod} -> enclave:{port} gives {want!r}",
            lambda: (got := self.connect(namespace, pod, port)) == want and got,
            timeout=timeout, interval=0.5,
            on_timeout=lambda: self.cluster.log_tail(NETWORK_POLICY_ENGINE, "kubelet"),
        )
        return str(result)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("netpol")
    policies = _render_policies(tmp)
    binary = tmp / "netcheck"
    source = Path(__file__).parent / "testdata" / "netcheck.c"
    subprocess.run(["gcc", "-Os", "-static", "-o", str(binary), str(source)], check=True)
    archive = write_image_archive(tmp / "netcheck.oci.tar", IMAGE,
                                  [ImageFile("/netcheck", binary.read_bytes(), 0o755)],
                                  entrypoint=["/netcheck"])
    cluster = LocalCluster(nodes=[], real_node=True, network_policy=True)
    try:
        cluster.start()
        TIMINGS["cluster_usable_seconds"] = cluster.startup_seconds or 0.0
        TIMINGS["engine_ready_seconds"] = cluster.network_policy_ready_seconds or 0.0
        cluster.import_image(archive)
        kube = Kube.from_kubeconfig(cluster.kubeconfig)
        for ns in (NAMESPACE, TENANT):
            kube.create("/api/v1/namespaces",
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for policy in policies:
            kube.create(f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies", policy)
        enclave_policy = _enclave_policy(policies)
        gateway_labels = _gateway_peer(enclave_policy)["podSelector"]["matchLabels"]
        pods = [
            (NAMESPACE, "enclave", enclave_policy["spec"]["podSelector"]["matchLabels"],
             ["serve", str(GRPC_PORT), str(METRICS_PORT)]),
            (NAMESPACE, "gateway", gateway_labels, ["serve", "8080"]),
            (NAMESPACE, "outsider", {"app": "outsider"}, ["serve", "8080"]),
            (TENANT, "impostor", gateway_labels, ["serve", "8080"]),  # the gateway's labels, wrong namespace
        ]
        for ns, name, labels, args in pods:
            kube.create(f"/api/v1/namespaces/{ns}/pods", _pod(name, labels, args))
        for ns, name, _, _ in pods:
            wait_pod(kube, ns, name, "to run", lambda p: p.get("status", {}).get("phase") == "Running",
                     timeout=120, diag=lambda: cluster.log_tail("kubelet", "containerd"))
        enclave_ip = kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods/enclave")["status"]["podIP"]
        yield Net(cluster, kube, enclave_ip, enclave_policy)
        kube.close()
    finally:
        cluster.stop()


def test_the_gateway_reaches_the_enclave_and_pods_outside_the_allowed_set_do_not(net: Net) -> None:
    # the engine learns pods from its watch: until it knows the enclave's IP it lets packets pass
    # (upstream's race, kubernetes#85966), so wait for the first refusal, then hold it steady
    t0 = time.monotonic()
    assert net.eventually(NAMESPACE, "outsider", GRPC_PORT, "timeout") == "timeout"
    TIMINGS["policy_enforced_seconds"] = time.monotonic() - t0
    assert net.connect(NAMESPACE, "gateway", GRPC_PORT) == f"open {GRPC_PORT}"
    # the attacker cases: a dropped SYN, not a closed port (the enclave listens, as the gateway saw)
    for _ in range(2):
        assert net.connect(NAMESPACE, "outsider", GRPC_PORT) == "timeout"
        assert net.connect(TENANT, "impostor", GRPC_PORT) == "timeout"
    # the chart leaves the metrics port open to anyone (metricsIngressFrom empty): the outsider's
    # network works, only the gRPC port is closed to it
    assert net.connect(NAMESPACE, "outsider", METRICS_PORT) == f"open {METRICS_PORT}"


def test_weakened_without_the_enclave_policy_the_outsider_connects(net: Net) -> None:
    """The same traffic with the chart's enclave policy deleted gets through: the refusal above is
    the engine enforcing that policy (an engine that enforced nothing would fail the test above)."""
    name = net.policy["metadata"]["name"]
    path = f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies"
    net.kube.delete(f"{path}/{name}")
    try:
        assert net.eventually(NAMESPACE, "outsider", GRPC_PORT, f"open {GRPC_PORT}") == f"open {GRPC_PORT}"
        assert net.connect(TENANT, "impostor", GRPC_PORT) == f"open {GRPC_PORT}"
    finally:
        net.kube.create(path, net.policy)
    assert net.eventually(NAMESPACE, "outsider", GRPC_PORT, "timeout") == "timeout"


def test_the_engines_identity_can_only_read_what_it_enforces(net: Net) -> None:
    """The engine's own certificate: list pods, namespaces and policies; nothing else (a stolen
    kubeconfig cannot read Secrets, change a policy or start a pod)."""
    assert net.cluster.real_node is not None
    engine = Kube.from_kubeconfig(net.cluster.real_node.paths.netpol_kubeconfig)
    try:
        for path in ("/api/v1/pods", "/api/v1/namespaces", "/apis/networking.k8s.io/v1/networkpolicies"):
            assert "items" in engine.get(path)
        policies = f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies"
        refused = [
            lambda: engine.get(f"/api/v1/namespaces/{NAMESPACE}/secrets"),
            lambda: engine.get(f"{policies}/{net.policy['metadata']['name']}"),  # get is not list
            lambda: engine.delete(f"{policies}/{net.policy['metadata']['name']}"),
            lambda: engine.create(f"/api/v1/namespaces/{TENANT}/pods", _pod("x", {}, ["serve", "1"])),
        ]
        for attempt in refused:
            with pytest.raises(KubeError) as err:
                attempt()
            assert err.value.status == 403
    finally:
        engine.close()


def test_a_killed_engine_fails_closed_and_stop_removes_its_steering(net: Net) -> None:
    """SIGKILL leaves the steering to the engine's queue, which then has no listener, so the kernel
    drops even the gateway's new connections; ``stop`` (clean_host) removes it and nothing is left."""
    engine = next(p for p in net.cluster.procs if p.name == NETWORK_POLICY_ENGINE)
    assert net.connect(NAMESPACE, "gateway", GRPC_PORT) == f"open {GRPC_PORT}"
    os.killpg(engine.popen.pid, signal.SIGKILL)
    engine.popen.wait()
    assert netpol.steering_present() and not netpol.queue_bound()
    assert net.connect(NAMESPACE, "gateway", GRPC_PORT) == "timeout"
    assert f"iptables -t mangle chain {netpol.STEERING_CHAIN}" in host_leftovers()
    net.cluster.procs.remove(engine)  # it is gone; stop() must not wait for it
    net.cluster.stop()
    assert not netpol.steering_present() and not netpol.table_present()
    assert host_leftovers() == []
    print(f"\nnetwork policy timings: {', '.join(f'{k}={v:.1f}' for k, v in TIMINGS.items())}")
