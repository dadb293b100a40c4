"""`cmcpctl demo --cluster` on the real control plane, run as a user runs it (a subprocess).

The command installs charts/cmcp with helm, applies a PolicyBundle and an McpRoute with kubectl,
runs the guarded upstream as a pod and adds the gateway with `helm upgrade`; then it tells the
local demo's story through the in-cluster gateway and uninstalls. Every pod is a real container on
the real node from the images built in this run: `--values` names them by digest, places the pods
there and makes the route `tee: tdx` through the node's kata-qemu-tdx handler (its TSM stand-in).
Here we check what it printed (every step's expected == actual, and whether the upstream ran), the
files it wrote (and that they verify), and that the uninstall left nothing cluster-scoped behind but
the CRDs.

One cMCP release per cluster (the operator's webhook configuration has a fixed name), and
test_chart_install.py installs the chart in the same session cluster: the fixture waits until
no other release owns that configuration (that module uninstalls at its end) and removes a
non-Helm leftover of an operator run outside Helm, as test_chart_install does. Different
release name (cmcp-demo) and namespace, so nothing else is shared.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cmcp_core.verify import verify_audit_export
from cmcp_devkit.cluster.kube import KubeError

from .conftest import E2ECluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CMCPCTL = Path(sys.executable).with_name("cmcpctl")
NS = f"cmcp-demo-{uuid.uuid4().hex[:6]}"
RELEASE = "cmcp-demo"
WEBHOOK_CONFIG = "cmcp-operator.cmcp.dev"
KINDS = ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")
TDX_CLASS = f"kata-qemu-tdx-{NS}"  # the kata-qemu-tdx handler, placed on the real node

# (step number, tool, expected outcome, upstream ran) exactly as the local demo defines them
STORY = [
    (1, "crm.lookup_customer", "allowed", "yes"),
    (2, "crm.export_all_customers", "TOOL_NOT_IN_CATALOG", "no"),
    (3, "email.send_external", "POLICY_DENY", "no"),
    (4, "email.send_external", "allowed", "yes"),
    (5, "ehr.read_patient_record", "allowed", "yes"),
    (6, "email.send_external", "POLICY_DENY", "no"),
    (7, "email.send_external", "PERMIT_MISSING", "no"),
    (8, "ehr.read_patient_record", "PERMIT_REPLAYED", "no"),
]

Demo = tuple[subprocess.CompletedProcess[str], Path]


def _webhook_owner(cluster: E2ECluster) -> str | None:
    """``release/namespace`` of the Helm release owning the webhook configuration, if any.

    A configuration no Helm release owns (Kopf left it after an operator ran outside Helm) is
    deleted: it would block any install, and it belongs to no test that is still running."""
    owner = None
    for kind in KINDS:
        path = f"/apis/admissionregistration.k8s.io/v1/{kind}/{WEBHOOK_CONFIG}"
        with contextlib.suppress(KubeError):
            meta = cluster.kube.get(path)["metadata"]
            if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") != "Helm":
                cluster.kube.delete(path)
                continue
            ann = meta.get("annotations") or {}
            owner = f"{ann.get('meta.helm.sh/release-name')}/{ann.get('meta.helm.sh/release-namespace')}"
    return owner


@pytest.fixture(scope="module")
def demo(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    if not cluster.is_local:
        pytest.skip("needs the local plane's real node (images built in the run, the TSM stand-in)")
    cluster.kube.wait_for(
        "no other cMCP release in the cluster (one per cluster)",
        lambda: _webhook_owner(cluster) is None,
        timeout=240,
        on_timeout=lambda: f"still installed: {_webhook_owner(cluster)}",
    )
    work = tmp_path_factory.mktemp("demo-cluster")
    out, real_pods = work / "out", work / "real-pods.yaml"
    real_pods.write_text(yaml.safe_dump(cluster.real_chart_values(TDX_CLASS)), encoding="utf-8")
    with cluster.real_tdx_runtime_class(TDX_CLASS):
        proc = subprocess.run(
            [
                str(CMCPCTL),
                "demo",
                "--cluster",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--namespace",
                NS,
                "--out",
                str(out),
                "--helm",
                str(cluster.helm_bin),
                "--kubectl",
                str(cluster.kubectl_bin),
                "--values",
                str(real_pods),
            ],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=780,
            cwd=ROOT,
        )
        yield proc, out


def test_demo_cluster_exits_zero_and_tells_the_story(demo: Demo) -> None:
    proc, out = demo
    log = out / "run" / "kubectl-helm.log"
    context = proc.stdout[-6000:] + proc.stderr[-3000:] + (log.read_text()[-4000:] if log.exists() else "")
    assert proc.returncode == 0, context
    text = proc.stdout
    # Installed the way a platform team would, in this order.
    order = [
        f"helm upgrade --install {RELEASE} charts/cmcp -f simulated-values.yaml -f real-pods.yaml",
        "kubectl apply PolicyBundle demo-realistic (examples/realistic)",
        "kubectl apply McpRoute demo (tee: tdx); enclave pod attested",
        "kubectl apply Pod cmcp-demo-upstream",
        f"helm upgrade {RELEASE}: the gateway for route demo",
        f"helm uninstall {RELEASE}",
    ]
    positions = [text.find("✔ " + item) for item in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), (positions, text[-6000:])
    # Every step: expected == actual, and the upstream's own counter says whether it ran.
    rows = {
        int(parts[0]): " ".join(parts)
        for parts in (line.split() for line in text.splitlines())
        if len(parts) > 2 and parts[0].isdigit() and parts[1] in ("agent", "host")
    }
    for number, tool, expected, ran in STORY:
        assert f"{tool} {expected} {expected} {ran} ✔" in rows.get(number, ""), (number, rows.get(number))
    assert "All 8 steps and 10 checks came out as expected on the cluster" in text
    assert "cleanup: route, bundle, upstream, release removed ✔ ok" in " ".join(text.split())
    # The enclave's address is a pod IP on the cluster's pod network, not a local process.
    assert re.search(r"^enclave pod +\d+\.\d+\.\d+\.\d+:50051 ", text, re.MULTILINE), text[:3000]


def test_demo_cluster_writes_verifiable_files(demo: Demo) -> None:
    proc, out = demo
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = list(out.glob("*.trust-record.json"))
    audits = list(out.glob("*.audit.json"))
    assert len(records) == 1 and len(audits) == 1
    for name in ("enclave.attest.json", "enclave-key.jwk.json", "enclave.nonce.hex"):
        assert (out / name).is_file(), name
    # What was applied is kept for the reader: the rendered bundle, route, upstream pod, values.
    for name in ("policybundle.yaml", "mcproute.yaml", "upstream-pod.yaml", "values-gateway.yaml"):
        assert (out / "run" / name).is_file(), name
    record = json.loads(records[0].read_text())
    entries = json.loads(audits[0].read_text())
    key = json.loads((out / "enclave-key.jwk.json").read_text())
    tip = record["tool_transcript"]["hash"]
    assert verify_audit_export(entries, key, expected_tip=tip).passed
    assert records[0].name.removesuffix(".trust-record.json") == audits[0].name.removesuffix(".audit.json")
    # The agent's bearer token went into a Secret, never into the output folder.
    assert "cmcp-gateway-tokens" not in (out / "run" / "values-gateway.yaml").read_text()
    assert not any("stringData" in p.read_text() for p in (out / "run").glob("*.yaml"))


def test_uninstall_left_only_the_crds(demo: Demo, cluster: E2ECluster) -> None:
    proc, _ = demo
    assert proc.returncode == 0, proc.stdout[-3000:]

    def namespace_gone() -> bool:
        try:
            cluster.kube.get(f"/api/v1/namespaces/{NS}")
        except KubeError as exc:
            return exc.status == 404
        return False

    cluster.kube.wait_for(
        f"the demo's namespace {NS} to be deleted",
        namespace_gone,
        timeout=180,
        on_timeout=cluster.diagnostics,
    )
    assert RELEASE not in cluster.helm("list", "-A", "-q").stdout.split()
    leftovers: list[str] = []
    for res in cluster.kubectl(
        "api-resources", "--namespaced=false", "--verbs=list", "-o", "name"
    ).stdout.split():
        got = cluster.kubectl(
            "get", res, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name", check=False
        )
        leftovers += got.stdout.split()
    for kind in KINDS:
        got = cluster.kubectl(
            "get", f"{kind}.admissionregistration.k8s.io", WEBHOOK_CONFIG, "-o", "name", check=False
        )
        leftovers += got.stdout.split()
    assert [n for n in leftovers if not n.startswith("customresourcedefinition")] == []
    # The CRDs stay on purpose (deleting them would delete every PolicyBundle and McpRoute).
    for crd in ("policybundles.cmcp.dev", "mcproutes.cmcp.dev"):
        assert cluster.kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")


def test_another_release_stops_the_demo_before_it_installs_anything(
    cluster: E2ECluster, tmp_path: Path
) -> None:
    """One release per cluster: the demo names the other release and how to remove it (exit 2)."""
    if not cluster.is_local:
        pytest.skip("local control plane only (it creates a cluster-scoped object)")
    path = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{WEBHOOK_CONFIG}"
    if _webhook_owner(cluster) is not None:
        pytest.skip("a real cMCP release is installed right now")
    cluster.kube.create(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {
                "name": WEBHOOK_CONFIG,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": "other",
                    "meta.helm.sh/release-namespace": "elsewhere",
                },
            },
        },
    )
    ns = f"cmcp-demo-{uuid.uuid4().hex[:6]}"
    try:
        proc = subprocess.run(
            [
                str(CMCPCTL),
                "demo",
                "--cluster",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--namespace",
                ns,
                "--out",
                str(tmp_path / "out"),
                "--helm",
                str(cluster.helm_bin),
                "--kubectl",
                str(cluster.kubectl_bin),
            ],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
            cwd=ROOT,
        )
    finally:
        cluster.kube.delete(path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "another cMCP release is installed (other in namespace elsewhere)" in proc.stdout
    assert "next: uninstall it (`helm uninstall other -n elsewhere`)" in proc.stdout
    with pytest.raises(KubeError):
        cluster.kube.get(f"/api/v1/namespaces/{ns}")
