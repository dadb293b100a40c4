"""helm from the pinned wheel: lint --strict, template, and a real install into the cluster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME

from .conftest import E2ECluster
from .workloads import ECHO_IMAGE, is_ready, pods

CHART = Path(__file__).parent / "testdata" / "echo-chart"


def test_helm_version_is_the_pinned_one(cluster: E2ECluster) -> None:
    out = cluster.helm("version", "--short").stdout
    assert out.startswith("v4."), out


def test_helm_lint_strict_and_template(cluster: E2ECluster) -> None:
    lint = cluster.helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    rendered = cluster.helm("template", "r1", str(CHART), "--set", "runtimeClassName=kata-qemu-tdx").stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service"}
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "kata-qemu-tdx"
    assert spec["containers"][0]["image"] == ECHO_IMAGE


def test_helm_lint_strict_rejects_a_broken_chart(cluster: E2ECluster, tmp_path: Path) -> None:
    broken = tmp_path / "echo-chart"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "service.yaml").write_text("metadata:\n  name: {{ .Values.missing.deeper }}\n")
    lint = cluster.helm("lint", "--strict", str(broken), check=False)
    assert lint.returncode != 0
    assert "nil pointer" in (lint.stdout + lint.stderr)


def test_helm_install_runs_on_the_cluster(cluster: E2ECluster, namespace: str) -> None:
    if not cluster.is_local:
        pytest.skip("the http-echo test image is built and imported on the local plane only")
    placement = cluster.real_pods  # real containers on the real node
    cluster.helm(
        "install",
        "r1",
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "replicaCount=2",
        "--set-json",
        f"nodeSelector={json.dumps(placement['nodeSelector'])}",
        "--wait",
        "--timeout",
        "120s",
    )

    def all_ready() -> bool:
        ps = pods(cluster.kube, namespace, "app.kubernetes.io/instance=r1")
        return len(ps) == 2 and all(is_ready(p) and p["spec"]["nodeName"] == REAL_NODE_NAME for p in ps)

    cluster.kube.wait_for("the chart's pods to be Ready", all_ready, on_timeout=cluster.diagnostics)
    status = cluster.helm("status", "r1", "--namespace", namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    cluster.helm("uninstall", "r1", "--namespace", namespace, "--wait")
