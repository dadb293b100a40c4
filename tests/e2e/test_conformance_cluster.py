"""`cmcpctl conformance` against the chart installed on the real control plane (issue 8).

The acceptance item: "CI runs the suite ... in the e2e job, against the chart installed on the
real control plane; every MUST passes". Every pod is a real container on the real node, from the
images built in this run: the fixture installs charts/cmcp with helm (the simulated-TEE profile,
then `--values` naming the images by digest, placing the pods on the real node and making the
enclave pods `tee: tdx` through the node's kata-qemu-tdx handler, whose OCI hook and TSM stand-in
give the enclave's real tdx provider software-only evidence of its own initdata) through
cmcpctl's own cluster installer (cmcp_ctl.demo_cluster, under another release name and
namespace), then:

* applies two PolicyBundles holding the conformance bundle (`cmcpctl conformance
  --write-bundle`): enforce mode, and the same policies measured in advisory mode;
* applies an McpRoute for each (tee: tdx); the operator starts and attests the enclave pods;
* runs the conformance upstream (`python -m cmcp_devkit.upstream --profile conformance`, an official
  `mcp` SDK server with its call counter, from the demo image) behind `cmcp-guard` (its own image)
  as one pod, the way the demo runs its upstream; the guard attests both routes' enclaves itself;
* adds the gateway with `helm upgrade`, one gateway route per McpRoute, both to that guard;

and runs `cmcpctl conformance --target <gateway URL> --kubeconfig --route ... --allow-disruption`
as a user would (a subprocess). With --allow-disruption the fail-closed checks (FAIL-001 and
POLICY-TEE-001's enclave-down check) stop the enclave for real: the runner scales the McpRoute
to 0 through its scale subresource, waits until the status lists no pod, runs the checks and
scales it back. Every ID but REPLICA-001, IDENT-001 and IDENT-002 must PASS; a check may SKIP
only if it is listed in LOCAL_ONLY_CHECKS (launching an enclave on a chosen bundle or
measurement, a local power; a route that trusts a token issuer) with that reason. A new
SKIP, or one with another reason, fails the test.

One cMCP release per cluster (the operator's webhook configuration has a fixed name): like
test_demo_cluster.py, the fixture waits until no other release owns it, and always uninstalls.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_conformance import catalogue
from cmcp_core.bundle import load_bundle
from cmcp_ctl import demo_cluster, demo_cmd
from cmcp_ctl.demo_cmd import AUDIENCE, Console

from .conftest import E2ECluster
from .test_demo_cluster import _webhook_owner

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
CMCPCTL = Path(sys.executable).with_name("cmcpctl")
RELEASE = "cmcp-conformance"  # contains the chart name: objects are cmcp-conformance-operator, -gateway
NS = f"cmcp-conformance-{uuid.uuid4().hex[:6]}"
ENFORCE, ADVISORY = "conformance", "conformance-advisory"  # bundle, McpRoute and gateway route names
UPSTREAM_POD = "cmcp-conformance-upstream"
TDX_CLASS = f"kata-qemu-tdx-{NS}"  # the kata-qemu-tdx handler, placed on the real node

# Only REPLICA-001 may SKIP on the cluster (the chart's Service does not let the suite address
# one gateway replica, nor does the cluster target name a second agent): FAIL-001's only check
# stops the enclave, which --allow-disruption grants there. Every individual check (suite test)
# allowed to skip, and the power it names; the other checks of POLICY-005 and POLICY-TEE-002
# run, so those IDs PASS.
_POWER = "needs local powers ({}); not available on a remote target"
# IDENT-001/002 need a route whose bundle trusts a token issuer and a way to mint its tokens; the
# cluster target does not deploy one (agent identity on the cluster: test_agent_identity_cluster.py).
_NO_IDENTITY_ROUTE = "target has no route whose bundle trusts a token issuer (identity)"
SKIPPED_IDS = {"REPLICA-001", "IDENT-001", "IDENT-002", "ATTEST-007"}
_NO_GPU = "target requires no GPU (pass --require-gpu N, or --route for its status.gpu)"
LOCAL_ONLY_CHECKS = {
    "test_gpu_evidence_answers_this_attestation": _NO_GPU,  # ATTEST-007: the demo route has no spec.gpu
    "test_gpu_evidence_of_another_attestation_or_none_fails_the_whole_attestation": _NO_GPU,  # ATTEST-007
    "test_a_trust_record_names_gpu_evidence_for_its_own_nonce": _NO_GPU,  # ATTEST-007
    "test_any_replica_serves_any_session_and_sheds_nothing": (
        "target names no second gateway replica and agent for it (the local target has both)"
    ),  # REPLICA-001
    "test_the_enclave_decides_only_for_the_principal_the_token_proves": _NO_IDENTITY_ROUTE,  # IDENT-001
    "test_bad_tokens_get_401_with_a_challenge_and_run_nothing": _NO_IDENTITY_ROUTE,  # IDENT-002
    "test_invalid_bundle_never_serves": _POWER.format("launch an enclave on a chosen bundle"),  # POLICY-005
    "test_enclave_refuses_a_changed_bundle_under_the_old_initdata": _POWER.format(
        "launch an enclave on a chosen bundle"
    ),  # POLICY-TEE-002
    "test_enclave_refuses_initdata_other_than_the_measured": _POWER.format(
        "launch an enclave under a chosen measurement"
    ),  # POLICY-TEE-002
}

LINE = re.compile(r"^(PASS|FAIL|SKIP) +(\S+) +(MUST|SHOULD) +(.*?) -- (.*)$")


@dataclass
class ConformanceRun:
    proc: subprocess.CompletedProcess[str]
    junit: Path
    enclave: str
    advisory_enclave: str
    log: Path
    route_before: dict[str, Any]  # the enforce McpRoute before the run
    route_after: dict[str, Any]  # ... and once it is over (scaled back?)
    cleanup_problems: list[str] = field(default_factory=list)

    def context(self) -> str:
        log = self.log.read_text()[-4000:] if self.log.exists() else ""
        return self.proc.stdout[-8000:] + "\n--- stderr\n" + self.proc.stderr[-4000:] + "\n--- log\n" + log


def _route(name: str) -> dict[str, Any]:
    """An McpRoute for the bundle of the same name; the permit audience the guard checks."""
    return {
        "apiVersion": f"{demo_cluster.GROUP}/v1alpha1",
        "kind": "McpRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "policyBundleRef": {"name": name},
            "upstream": {"url": f"http://{UPSTREAM_POD}.{NS}.svc:{demo_cluster.GUARD_PORT}/mcp"},
            "audience": AUDIENCE,
            "tee": "tdx",
            "replicas": 1,
        },
    }


def _read_route(cluster: E2ECluster) -> dict[str, Any]:
    out = cluster.kubectl("get", f"mcproute.{demo_cluster.GROUP}", ENFORCE, "-n", NS, "-o", "json")
    route: dict[str, Any] = json.loads(out.stdout)
    return route


def _delete_ours(demo: demo_cluster.ClusterDemo) -> list[str]:
    """Our routes, bundles and pod, before the installer's teardown uninstalls the release
    (the operator's finalizers need the operator)."""
    problems = []
    for kind, name in (
        (f"mcproute.{demo_cluster.GROUP}", ENFORCE),
        (f"mcproute.{demo_cluster.GROUP}", ADVISORY),
        (f"policybundle.{demo_cluster.GROUP}", ENFORCE),
        (f"policybundle.{demo_cluster.GROUP}", ADVISORY),
        ("pod", UPSTREAM_POD),
    ):
        try:
            demo.tools.kubectl("delete", kind, name, "-n", NS, "--ignore-not-found", "--timeout=120s")
        except demo_cluster.ToolError as exc:
            problems.append(str(exc))
    return problems


@pytest.fixture(scope="module")
def conformance_run(
    cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConformanceRun]:
    if not cluster.is_local:
        pytest.skip("needs the local plane's real node (images built in the run, the TSM stand-in)")
    cluster.kube.wait_for(
        "no other cMCP release in the cluster (one per cluster)",
        lambda: _webhook_owner(cluster) is None,
        timeout=300,
        on_timeout=lambda: f"still installed: {_webhook_owner(cluster)}",
    )
    work = tmp_path_factory.mktemp("conformance-cluster")
    # the bundles exactly as a user gets them: `cmcpctl conformance --write-bundle DIR`
    enforce_dir, advisory_dir = work / "bundle-enforce", work / "bundle-advisory"
    for directory, mode in ((enforce_dir, "enforce"), (advisory_dir, "advisory")):
        subprocess.run(
            [str(CMCPCTL), "conformance", "--write-bundle", str(directory), "--bundle-mode", mode],
            check=True,
            capture_output=True,
        )
    enforce_hash = load_bundle(enforce_dir).bundle_hash
    advisory_hash = load_bundle(advisory_dir).bundle_hash
    assert enforce_hash != advisory_hash  # the mode is measured

    real_pods = work / "values-real-pods.yaml"
    real_pods.write_text(yaml.safe_dump(cluster.real_chart_values(TDX_CLASS)), encoding="utf-8")
    settings = demo_cluster.resolve_settings(
        argparse.Namespace(
            kubeconfig=str(cluster.kubeconfig),
            namespace=NS,
            helm=str(cluster.helm_bin),
            kubectl=str(cluster.kubectl_bin),
            bundle=str(enforce_dir),
            values=[str(real_pods)],
            keep=False,
        )
    )
    out = demo_cmd.prepare_out(str(work / "out"))
    settings.tools.log = out / "run" / "kubectl-helm.log"
    console_log = (out / "run" / "install.txt").open("w", encoding="utf-8")
    demo = demo_cluster.ClusterDemo(Console(console_log), settings, out, release=RELEASE)
    run: ConformanceRun | None = None
    with cluster.real_tdx_runtime_class(TDX_CLASS):
        try:
            demo._preflight()
            demo._install()
            enclave = demo._apply_bundle_and_route(
                enforce_hash, bundle_dir=enforce_dir, bundle_name=ENFORCE, route=_route(ENFORCE)
            )
            advisory_enclave = demo._apply_bundle_and_route(
                advisory_hash, bundle_dir=advisory_dir, bundle_name=ADVISORY, route=_route(ADVISORY)
            )
            pod = demo_cluster.upstream_pod(
                NS,
                demo.image("demo"),
                demo.image("guard"),
                enclave,
                enforce_hash,
                name=UPSTREAM_POD,
                server_module="cmcp_devkit.upstream",
                # unguarded: the guard is the pod's cmcp-guard container
                server_args=["--profile", "conformance"],
                more_enclaves=[(advisory_enclave, advisory_hash)],
                wiretap=False,
                route=ENFORCE,  # the guard follows the enforce route's pods; the advisory one is fixed
                modes=("enforce", "advisory"),
                where=demo.upstream_placement(),
            )
            demo._start_upstream(enclave, enforce_hash, pod_doc=pod, guard_routes=[ENFORCE])
            guard = f"http://{demo.endpoints['upstream']}:{demo_cluster.GUARD_PORT}"
            gateway = demo._add_gateway(
                routes=[
                    {
                        "name": name,
                        "mcpRoute": {"name": name, "namespace": NS},
                        "upstream": f"{guard}/mcp",
                        "audience": AUDIENCE,
                        "enforcementModes": [mode],
                    }
                    for name, mode in ((ENFORCE, "enforce"), (ADVISORY, "advisory"))
                ]
            )
            junit = work / "conformance.xml"
            # the chart's gateway identity: the checks that play a compromised gateway need its key
            key_b64 = cluster.kubectl("get", "secret", f"{RELEASE}-gateway-identity", "-n", NS, "-o",
                                      "jsonpath={.data.gateway-key\\.pem}").stdout
            gateway_key = work / "gateway-key.pem"
            gateway_key.write_bytes(base64.b64decode(key_b64.strip()))
            audit_store = demo._gateway_audit_store()
            assert audit_store, "the gateway pod's audit store is not on this machine's disk"
            route_before = _read_route(cluster)
            proc = subprocess.run(
                [
                    str(CMCPCTL),
                    "conformance",
                    "--target",
                    f"{gateway}/mcp/{ENFORCE}",
                    "--kubeconfig",
                    str(cluster.kubeconfig),
                    "--route",
                    f"{NS}/{ENFORCE}",
                    f"--token={demo.token}",  # one word: a generated token may start with "-"
                    "--gateway-key",
                    str(gateway_key),
                    "--advisory-url",
                    f"{gateway}/mcp/{ADVISORY}",
                    "--advisory-enclave",
                    advisory_enclave,
                    "--upstream",
                    f"{guard}/mcp",
                    "--upstream-counter",
                    f"{guard}/calls",
                    "--allow-simulated",
                    *demo.enclave_release.argv(),  # the release the chart's operator and gateway trust
                    "--allow-disruption",
                    # the gateway pod's audit store, as an auditor reads it (on the real node's disk)
                    f"--audit-store={audit_store}",
                    "--junit",
                    str(junit),
                ],
                capture_output=True,
                text=True,
                encoding="utf-8",
                timeout=900,
                cwd=ROOT,
            )
            route_after = _read_route(cluster)
            run = ConformanceRun(
                proc, junit, enclave, advisory_enclave, settings.tools.log, route_before, route_after
            )
            if proc.returncode != 0:
                demo._save_state()
        except BaseException:
            demo._save_state()
            raise
        finally:
            problems = _delete_ours(demo)
            problems += demo._teardown()
            console_log.close()
            if run is not None:
                run.cleanup_problems = problems
    assert run is not None
    yield run


def _results(text: str) -> dict[str, tuple[str, str, str]]:
    """ID -> (outcome, level, reason) from the per-ID lines; each ID printed exactly once."""
    found: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            outcome, rid, level, _title, reason = m.groups()
            assert rid not in found, f"{rid} printed twice"
            found[rid] = (outcome, level, reason)
    return found


def test_every_must_passes_on_the_cluster(conformance_run: ConformanceRun) -> None:
    proc = conformance_run.proc
    print(proc.stdout)  # the per-ID report, shown with -rP
    assert proc.returncode == 0, conformance_run.context()
    # the runner read the McpRoute status and tested the enclave pod the operator attested
    assert f"enclave={conformance_run.enclave}" in proc.stdout.splitlines()[0], proc.stdout[:500]
    results = _results(proc.stdout)
    assert set(results) == {req.id for req in catalogue.active()}, conformance_run.context()
    for req in catalogue.active():
        outcome, level, reason = results[req.id]
        assert level == req.level.value
        # SHOULDs too: on this deployment nothing excuses them
        expected = "SKIP" if req.id in SKIPPED_IDS else "PASS"
        assert outcome == expected, (req.id, outcome, reason, conformance_run.context())
    passed = len(results) - len(SKIPPED_IDS)
    assert f"conformance: {passed} passed, 0 failed, {len(SKIPPED_IDS)} skipped" in proc.stdout


def test_only_local_power_checks_skipped(conformance_run: ConformanceRun) -> None:
    """Check by check (the JUnit report): every skip is one of LOCAL_ONLY_CHECKS with its reason,
    so the advisory route, the upstream, its counter and the cluster probes all really ran."""
    assert conformance_run.junit.is_file(), conformance_run.context()
    skipped: dict[str, str] = {}
    ran: set[str] = set()
    for case in ET.parse(conformance_run.junit).getroot().iter("testcase"):
        name = str(case.get("name"))
        skip = case.find("skipped")
        if skip is None:
            ran.add(name)
        else:
            skipped[name] = str(skip.get("message", ""))
    assert skipped == LOCAL_ONLY_CHECKS
    # the checks that need what only the cluster deployment gives: advisory route and enclave,
    # McpRoute status, PolicyBundle admission, direct upstream access and its counter, and the
    # enclave outage (--allow-disruption)
    for name in (
        "test_enclave_down_fails_closed",
        "test_enclave_unreachable_every_call_fails_closed",
        "test_advisory_mode_forwards_and_marks_the_result",
        "test_advisory_mode_records_advisory_deny_in_the_chain",
        "test_route_status_matches_fresh_evidence",
        "test_cluster_refuses_an_invalid_policy_bundle",
        "test_call_without_permit_or_for_a_denied_call_never_runs",
        "test_uncatalogued_tool_never_runs",
        "test_expired_permit_is_rejected",
    ):
        assert name in ran, name


def test_disruption_was_real_and_undone(conformance_run: ConformanceRun) -> None:
    """The outage checks scaled the route to 0 (the enclave pod was replaced) and back to its
    replica count, attested again."""
    assert "--allow-disruption: fail-closed checks scale McpRoute" in conformance_run.proc.stdout
    before, after = conformance_run.route_before, conformance_run.route_after
    assert after["spec"]["replicas"] == before["spec"]["replicas"] == 1
    old = [p for p in before["status"]["pods"] if p.get("attested")]
    new = [p for p in after["status"]["pods"] if p.get("attested")]
    assert len(old) == len(new) == 1, (before["status"], after["status"])
    # a new pod (scaling to 0 deleted the one the run started with), serving the same bundle
    assert new[0]["uid"] != old[0]["uid"], (old, new)
    assert new[0]["reportedBundleHash"] == after["status"]["bundleHash"] == before["status"]["bundleHash"]
    # The replacement has the address the real node's IPAM gave it (the CNI's host-local plugin
    # does not hand the freed IP back at once); the upstream pod's cmcp-guard follows the enforce
    # route (--route) and the gateway catches up on the route's status, so the run recovered.
    assert conformance_run.enclave in {str(old[0]["address"]), f"{old[0]['address']}:50051"}, (old, new)


def test_junit_report_names_every_id(conformance_run: ConformanceRun) -> None:
    assert conformance_run.junit.is_file(), conformance_run.context()
    root = ET.parse(conformance_run.junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    assert [s.get("name") for s in suites] == ["cmcp-conformance"]
    failures = sum(int(s.get("failures", "0")) + int(s.get("errors", "0")) for s in suites)
    assert failures == 0, conformance_run.context()


def test_cleanup_removed_everything(conformance_run: ConformanceRun, cluster: E2ECluster) -> None:
    assert conformance_run.cleanup_problems == []
    assert RELEASE not in cluster.helm("list", "-A", "-q").stdout.split()
    assert _webhook_owner(cluster) is None  # the next release can install
