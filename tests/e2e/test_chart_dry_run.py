"""Every rendering of charts/cmcp is accepted by a real kube-apiserver (`kubectl apply --dry-run=server`).

Server-side dry run goes through the whole admission chain: schema validation of built-in kinds
(Deployment, NetworkPolicy, RBAC, ValidatingAdmissionPolicy with its CEL compiled by the
apiserver, ...), defaulting, and validation of our own custom resources against the CRDs. The
chart's CRDs are applied for real first (identical to crds/, which the operator tests use too).
The Prometheus Operator kinds exist only as stub CRDs here (kind/scope, not their schema).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cmcp_devkit.cluster.kube import KubeError
from cmcp_devkit.release import DevRelease

from .conftest import E2ECluster, release_values

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cmcp"
PROFILES = [None, *sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))]
# Namespaces the profiles name (watched namespaces, McpRoute namespaces).
PROFILE_NAMESPACES = ("team-a", "team-b", "cmcp-demo")
MONITORING_GROUP = "monitoring.coreos.com"


def _stub_crd(kind: str, plural: str) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{MONITORING_GROUP}", "labels": {"cmcp-test": "chart-dry-run"}},
        "spec": {
            "group": MONITORING_GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def prepared(cluster: E2ECluster) -> Iterator[E2ECluster]:
    kube = cluster.kube
    cluster.kubectl("apply", "--server-side", "--field-manager=cmcp-chart-test", "-f", str(CHART / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/policybundles.cmcp.dev",
        "crd/mcproutes.cmcp.dev",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    created_ns: list[str] = []
    for ns in ("cmcp-system", *PROFILE_NAMESPACES):
        try:
            kube.create(
                "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
            created_ns.append(ns)
        except KubeError as exc:
            if exc.status != 409:
                raise
    created_crds: list[str] = []
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors")):
        name = f"{plural}.{MONITORING_GROUP}"
        try:
            kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", _stub_crd(kind, plural))
            created_crds.append(name)
        except KubeError as exc:
            if exc.status != 409:
                raise
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    yield cluster
    for name in created_crds:
        kube.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    for ns in created_ns:
        kube.delete(f"/api/v1/namespaces/{ns}")


def _render(cluster: E2ECluster, profile: str | None, release: DevRelease) -> str:
    args = ["template", "rel", str(CHART), "-n", "cmcp-system", "--include-crds", *release_values(release)]
    if profile:
        args += ["-f", str(CHART / "ci" / profile)]
    return cluster.helm(*args).stdout


@pytest.mark.parametrize("profile", PROFILES, ids=[p or "default" for p in PROFILES])
def test_rendered_chart_is_accepted_by_the_apiserver(
    prepared: E2ECluster, profile: str | None, dev_release: DevRelease
) -> None:
    manifest = _render(prepared, profile, dev_release)
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "NetworkPolicy",
    } <= kinds
    proc = prepared.kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--field-manager=cmcp-chart-test",
        "--force-conflicts",
        "-f",
        "-",
        input=manifest,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # kubectl prints one line per object it sent: nothing was skipped.
    accepted = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(docs), proc.stdout


def test_apiserver_rejects_a_broken_rendering(prepared: E2ECluster, dev_release: DevRelease) -> None:
    """The control for the test above: the same pipe fails on an object the apiserver refuses."""
    docs = [d for d in yaml.safe_load_all(_render(prepared, "simulated-values.yaml", dev_release)) if d]
    vap = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    vap["spec"]["validations"][0]["expression"] = "object.spec.tee in variables.nope"  # no such variable
    proc = prepared.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(vap), check=False)
    assert proc.returncode != 0
    assert "variables.nope" in proc.stderr or "undefined" in proc.stderr.lower(), proc.stderr


def test_helm_install_dry_run_against_the_server(prepared: E2ECluster, dev_release: DevRelease) -> None:
    """helm's own server-side dry run (it also checks kubeVersion and the CRD kinds it must map)."""
    try:
        out = prepared.helm(
            "install",
            "rel-dry",
            str(CHART),
            "-n",
            "cmcp-system",
            "--dry-run=server",
            *release_values(dev_release),
            "-f",
            str(CHART / "ci" / "tdx-only-values.yaml"),
        ).stdout
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"helm install --dry-run=server failed: {exc.stderr}")
    assert "kind: ValidatingAdmissionPolicy" in out and "NOTES:" in out
