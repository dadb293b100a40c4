"""The operator on a real control plane: admission, attestation-gated routing, rollout, restart.

Runs ``cmcp-operator`` as its own process (so it can be SIGKILLed mid-rollout) against the
dev kit's local cluster, ``cmcp_devkit.cluster`` (real apiserver, scheduler, controller-manager).
Every enclave pod, the operator's and the rogue ones, is a real container of the enclave image built
in the run (by digest), run by the real node's kubelet, containerd and runc through a RuntimeClass
of the ``kata-qemu-tdx`` handler: its OCI hook and configfs-tsm stand-in play the hypervisor, so
the enclave's production ``--tee tdx`` provider gets simulated TDX evidence whose MRCONFIGID is the
pod's own initdata annotation (software-only, accepted because the operator runs with
``--allow-simulated``). The host plays the malicious hypervisor for the forged guest: Kata's
``kernel_params`` annotation adds kernel parameters, which the stand-in measures into RTMR2.
The tests run in file order and share one namespace: each builds on the state the previous
one left, like an operator's life.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from cmcp_core.bundle import load_bundle, read_bundle_files
from cmcp_core.crd import API_PATH
from cmcp_core.initdata import (
    ANNOTATION,
    CmcpEntry,
    decode_annotation,
    encode_annotation,
    parse,
    render,
    tdx_mrconfigid,
)
from cmcp_core.launch_policy import LaunchSpec
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import AppraisalPolicy
from cmcp_devkit.cluster.control_plane import free_port
from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.cluster.tsm_hook import KERNEL_PARAMS_ANNOTATION
from cmcp_devkit.release import DevRelease
from cmcp_operator import rbac
from cmcp_operator.bundles import path_to_key, verify_history, volume_items
from cmcp_operator.config import OperatorConfig
from cmcp_operator.render_bundle import bundle_manifest, dump
from cmcp_operator.workloads import enclave_command, launch_spec, workload_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NS = f"cmcp-op-{uuid.uuid4().hex[:6]}"
ROUTE, BUNDLE = "echo", "minimal"
SVC = f"cmcp-{ROUTE}"
GROUP_PATH = f"{API_PATH}/namespaces/{NS}"
TDX_LABEL = "intel.feature.node.kubernetes.io/tdx"
# the kata-qemu-tdx handler (its hook and TSM stand-in) on the tainted real node, for this file's pods
REAL_TDX_CLASS = f"kata-qemu-tdx-real-{NS.rpartition('-')[2]}"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def kube(cluster: Any) -> Kube:
    """Needs the local plane: its real node runs the enclave image built in the run, and its kata
    handler's hook and TSM stand-in measure each pod's own initdata annotation."""
    if not cluster.is_local:
        pytest.skip("needs the local plane's real node (the enclave image built in the run, the kata "
                    "handler's OCI hook and TSM stand-in)")
    return cluster.kube  # type: ignore[no-any-return]


class OperatorProcess:
    """``cmcp-operator`` as a child process; ``kill()`` is SIGKILL (no graceful cleanup)."""

    def __init__(self, kubeconfig: Path, log_dir: Path, real_node_flags: list[str]) -> None:
        self.kubeconfig, self.log_dir, self.real_node_flags = kubeconfig, log_dir, real_node_flags
        self.webhook_port, self.metrics_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        argv = [str(Path(sys.executable).with_name("cmcp-operator")), "--namespace", NS,
                "--reattest-interval", "5", *self.real_node_flags,
                "--webhook-port", str(self.webhook_port), "--webhook-host", "127.0.0.1",
                "--webhook-listen", "127.0.0.1", "--metrics-port", str(self.metrics_port)]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture(scope="module")
def operator(cluster: Any, kube: Kube, tmp_path_factory: pytest.TempPathFactory,
             real_release: DevRelease) -> Iterator[OperatorProcess]:
    with cluster.real_tdx_runtime_class(REAL_TDX_CLASS) as runtime_class:
        yield from _operator(cluster, kube, tmp_path_factory, real_release, runtime_class)


def _operator(cluster: Any, kube: Kube, tmp_path_factory: pytest.TempPathFactory,
              release: DevRelease, runtime_class: str) -> Iterator[OperatorProcess]:
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "-f", str(crd))
    for crd in ("policybundles.cmcp.dev", "mcproutes.cmcp.dev"):
        kube.wait_for(f"CRD {crd} established", lambda c=crd: any(
            x["type"] == "Established" and x["status"] == "True"
            for x in (kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{c}")
                      .get("status") or {}).get("conditions") or []))
    kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    # The webhook configurations the chart would create (the operator only reads and patches them).
    for kind in rbac.WEBHOOK_KINDS:
        kube.apply(f"/apis/admissionregistration.k8s.io/v1/{kind}/{rbac.WEBHOOK_CONFIGURATION}",
                   {"apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingWebhookConfiguration" if kind.startswith("validating")
                    else "MutatingWebhookConfiguration", "metadata": {"name": rbac.WEBHOOK_CONFIGURATION}})
    # Least privilege for real: the operator runs as a ServiceAccount bound to exactly the
    # ClusterRole that cmcp_operator.rbac prints (the chart's watchScope: cluster).
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = _service_account_kubeconfig(cluster, kube, workdir)
    op = OperatorProcess(kubeconfig, workdir, cluster.real_operator_flags(runtime_class, release))
    op.start()
    # The webhook is registered once the operator is up: an invalid bundle is then refused.
    kube.wait_for("admission webhook registered", lambda: _webhook_ready(kube), timeout=60,
                  on_timeout=op.log_tail)
    yield op
    op.stop()
    # The pod gate is a persistent webhook (fail closed while the operator is down); remove it
    # so later tests in the session do not meet a webhook whose server is gone.
    kube.delete(f"{WEBHOOKS}/cmcp-operator.cmcp.dev")
    kube.delete("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/cmcp-operator.cmcp.dev")
    kube.delete(f"/api/v1/namespaces/{NS}")
    kube.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/cmcp-operator-{NS}")
    kube.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/cmcp-operator-{NS}")


def _service_account_kubeconfig(cluster: Any, kube: Kube, workdir: Path) -> Path:
    role = rbac.cluster_role(f"cmcp-operator-{NS}")
    kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "cmcp-operator"}})
    kube.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
    kube.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": role["metadata"]["name"]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": role["metadata"]["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": "cmcp-operator", "namespace": NS}]})
    token = cluster.kubectl("create", "token", "cmcp-operator", "-n", NS, "--duration", "3h").stdout.strip()
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
           "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                                   "certificate-authority": str(cluster.ca_file)}}],
           "users": [{"name": "sa", "user": {"token": token}}],
           "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def _webhook_ready(kube: Kube) -> bool:
    try:
        cfg = kube.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
                       "cmcp-operator.cmcp.dev")
    except KubeError:
        return False
    return len(cfg.get("webhooks") or []) >= 3


# ------------------------------------------------------------------------------ helpers
def route(kube: Kube) -> dict[str, Any]:
    return dict(kube.get(f"{GROUP_PATH}/mcproutes/{ROUTE}"))


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def enclave_pods(kube: Kube) -> list[dict[str, Any]]:
    items = kube.get(f"/api/v1/namespaces/{NS}/pods", labelSelector=f"cmcp.dev/route={ROUTE}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(eps: dict[str, Any]) -> set[str]:
    return {addr for ep in eps.get("endpoints") or [] if ep.get("conditions", {}).get("ready")
            for addr in ep["addresses"]}


def ready_addresses(kube: Kube) -> set[str]:
    slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
                      labelSelector=f"kubernetes.io/service-name={SVC}")["items"]
    return set().union(*(_ready(s) for s in slices)) if slices else set()


def pod_bundle_hash(pod: dict[str, Any]) -> str:
    raw = (pod["metadata"].get("annotations") or {}).get(ANNOTATION)
    return parse(decode_annotation(raw)).cmcp.bundle_hash if raw else ""


def route_ready_at(kube: Kube, bundle_hash: str, replicas: int = 2) -> dict[str, Any] | None:
    r = route(kube)
    st = r.get("status", {})
    ok = (cond(r, "Ready").get("status") == "True" and st.get("bundleHash") == bundle_hash
          and st.get("attestedReplicas") == replicas and cond(r, "Ready").get("observedGeneration")
          == r["metadata"]["generation"])
    return r if ok else None


def apply_bundle(cluster: Any, directory: Path, extra_policy: str | None = None, check: bool = True,
                 name: str = BUNDLE) -> subprocess.CompletedProcess[str]:
    doc = bundle_manifest(directory, name, NS)
    if extra_policy is not None:
        doc["spec"]["files"]["policies/extra.cedar"] = extra_policy
    return cluster.kubectl("apply", "-f", "-", input=dump(doc), check=check)


def bundle_hash_of(directory: Path, extra_policy: str | None = None) -> str:
    files = read_bundle_files(directory)
    if extra_policy is not None:
        files["policies/extra.cedar"] = extra_policy
    from cmcp_core.bundle import bundle_from_files

    return bundle_from_files(files).bundle_hash


def extra(n: int) -> str:
    return (f'@id("rollout-{n}")\nforbid (principal, action, resource)'
            f' when {{ resource.name == "never-{n}" }};\n')


@dataclass
class EndpointWatcher:
    """Watches the route's EndpointSlices; after every change, checks each newly ready address:
    its pod must carry cmcp.dev/attested=True and measure a bundle hash we allow right now."""

    kube: Kube
    allowed: set[str]
    violations: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    events: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> EndpointWatcher:
        self.seen = ready_addresses(self.kube)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        """A real watch: every EndpointSlice change is one event, checked as it arrives."""
        path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
        by_slice: dict[str, set[str]] = {}
        while not self._stop.is_set():
            listing = self.kube.get(path, labelSelector=f"kubernetes.io/service-name={SVC}")
            by_slice = {s["metadata"]["name"]: _ready(s) for s in listing["items"]}
            self._observe(set().union(*by_slice.values()) if by_slice else set())
            params = {"watch": "true", "labelSelector": f"kubernetes.io/service-name={SVC}",
                      "resourceVersion": listing["metadata"]["resourceVersion"], "timeoutSeconds": "5"}
            with self.kube.http.stream("GET", path, params=params, timeout=None) as resp:
                for line in resp.iter_lines():
                    if self._stop.is_set() or not line:
                        break
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        break
                    name = event["object"]["metadata"]["name"]
                    if event["type"] == "DELETED":
                        by_slice.pop(name, None)
                    else:
                        by_slice[name] = _ready(event["object"])
                    self._observe(set().union(*by_slice.values()) if by_slice else set())

    def _observe(self, current: set[str]) -> None:
        self.events += 1
        added = current - self.seen
        if added:
            pods = {p.get("status", {}).get("podIP"): p for p in
                    self.kube.get(f"/api/v1/namespaces/{NS}/pods")["items"]}
            for addr in added:
                self._check(addr, pods.get(addr))
        self.seen = current

    def _check(self, addr: str, pod: dict[str, Any] | None) -> None:
        if pod is None:
            self.violations.append(f"{addr}: endpoint without a pod")
            return
        gate = next((c for c in pod["status"].get("conditions", []) if c["type"] == "cmcp.dev/attested"), {})
        bundle_hash = pod_bundle_hash(pod)
        name = pod["metadata"]["name"]
        if gate.get("status") != "True":
            self.violations.append(f"{name} ({addr}) in endpoints without cmcp.dev/attested=True: {gate}")
        if bundle_hash not in self.allowed:
            self.violations.append(
                f"{name} ({addr}) in endpoints with bundle {bundle_hash}, allowed {self.allowed}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)


def operator_launch(image: str) -> LaunchSpec:
    """The launch policy the operator, as the fixture runs it (``--tee tdx`` enclaves, no simulated
    provider), renders into the initdata of this route's pods."""
    config = OperatorConfig(appraisal=AppraisalPolicy(allow_simulated=True), enclave_image=image)
    return launch_spec(NS, image, enclave_command("tdx", config))


def attest_directly(address: str) -> enclave_pb2.AttestResponse:
    with grpc.insecure_channel(f"{address}:50051") as channel:
        return enclave_pb2_grpc.EnclaveStub(channel).Attest(
            enclave_pb2.AttestRequest(nonce=secrets.token_bytes(32)), timeout=10)


# ------------------------------------------------------------------------------ tests
def test_invalid_bundle_rejected_naming_file_and_policy(cluster: Any, operator: OperatorProcess) -> None:
    bad = ('@id("reads-missing-attr")\nforbid (principal, action, resource)'
           ' when { resource.nonexistent == 1 };\n')
    proc = apply_bundle(cluster, EXAMPLES / "minimal", extra_policy=bad, check=False, name="invalid")
    assert proc.returncode != 0
    assert "policies/extra.cedar" in proc.stderr and "reads-missing-attr" in proc.stderr, proc.stderr
    assert "nonexistent" in proc.stderr


def test_route_needs_an_existing_bundle(cluster: Any, operator: OperatorProcess) -> None:
    doc = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute",
           "metadata": {"name": "orphan", "namespace": NS},
           "spec": {"upstream": {"url": "http://up/mcp"}, "policyBundleRef": {"name": "no-such-bundle"}}}
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0 and "no-such-bundle" in proc.stderr and "not found" in proc.stderr
    # Structural schema: bounded replicas, enum tee (CEL rules run only on a schema-valid object).
    doc["spec"].update(replicas=1000, tee="sgx")
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0 and "spec.replicas" in proc.stderr and "spec.tee" in proc.stderr, proc.stderr
    # CEL: exactly one upstream form.
    doc["spec"].update(replicas=1, tee="tdx",
                       upstream={"url": "http://up/mcp", "service": {"name": "up", "port": 80}})
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0, proc.stderr
    assert "exactly one of upstream.url and upstream.service" in proc.stderr, proc.stderr


def test_pod_wearing_route_label_without_gate_is_refused(cluster: Any, kube: Kube,
                                                         operator: OperatorProcess) -> None:
    pod = {"metadata": {"name": "gateless", "labels": {"cmcp.dev/route": ROUTE}},
           "spec": {"containers": [{"name": "c", "image": cluster.enclave_image}]}}
    with pytest.raises(KubeError) as info:
        kube.create(f"/api/v1/namespaces/{NS}/pods", pod)
    assert info.value.status in (400, 403, 422) and "readinessGate" in info.value.body


def test_tdx_route_gets_attested_pods_with_exact_initdata(cluster: Any, kube: Kube,
                                                          operator: OperatorProcess) -> None:
    apply_bundle(cluster, EXAMPLES / "minimal")
    expected_hash = load_bundle(EXAMPLES / "minimal").bundle_hash
    doc = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute",
           "metadata": {"name": ROUTE, "namespace": NS},
           "spec": {"upstream": {"url": "http://echo-upstream.example/mcp"},
                    "policyBundleRef": {"name": BUNDLE}, "replicas": 2, "tee": "tdx"}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    r = kube.wait_for("route Ready", lambda: route_ready_at(kube, expected_hash), timeout=180,
                      on_timeout=operator.log_tail)
    bundle = load_bundle(EXAMPLES / "minimal")
    want = render(CmcpEntry(bundle.bundle_hash, bundle.catalog_hash, bundle.enforcement_mode,
                            f"{NS}/{ROUTE}", "http://echo-upstream.example/mcp"),
                  launch=operator_launch(cluster.enclave_image))
    pods = enclave_pods(kube)
    assert len(pods) == 2
    nodes = {n["metadata"]["name"]: n for n in kube.get("/api/v1/nodes")["items"]}
    for pod in pods:
        assert nodes[pod["spec"]["nodeName"]]["metadata"]["labels"].get(TDX_LABEL) == "true"
        cluster.assert_real_enclave(pod, REAL_TDX_CLASS)
        assert decode_annotation(pod["metadata"]["annotations"][ANNOTATION]) == want
        # The enclave reports the bytes it launched with, and the TEE (the node's stand-in) measured them.
        resp = attest_directly(pod["status"]["podIP"])
        assert resp.initdata == want and resp.bundle_hash == expected_hash
        assert tdx_mrconfigid(want).hex() in resp.evidence.hex()
    addresses = {p["status"]["podIP"] for p in pods}
    kube.wait_for("both pods in the EndpointSlice", lambda: ready_addresses(kube) == addresses, timeout=60)
    entries = {e["pod"]: e for e in r["status"]["pods"]}
    for pod in pods:
        e = entries[pod["metadata"]["name"]]
        assert e["attested"] and e["keyThumbprint"] and e["publicKeyJwk"]["crv"] == "Ed25519"
        assert e["reportedBundleHash"] == expected_hash and e["address"] == pod["status"]["podIP"]
    table = cluster.kubectl("get", "mcproutes", "-n", NS).stdout
    line = next(x for x in table.splitlines() if x.startswith(ROUTE))
    assert expected_hash[:19] in line and "enforce" in line and "2/2" in line and "True" in line, table
    pbs = cluster.kubectl("get", "pb", "-n", NS).stdout
    assert expected_hash[:19] in pbs
    pb = kube.get(f"{GROUP_PATH}/policybundles/{BUNDLE}")
    # No second copy of the bundle in an annotation (Kopf's diff-base): objects stay small.
    assert not [k for k in pb["metadata"].get("annotations", {}) if k.startswith("cmcp.dev/")]


def _rogue_pod(template: dict[str, Any], name: str, initdata: bytes, configmap: str, files: dict[str, str],
               kernel_params: str = "") -> dict[str, Any]:
    """A pod built like the operator's (its Deployment's pod template: the enclave image, ``--tee
    tdx``, the downward-API initdata of its own annotation, the runtime class) wearing the route's
    labels, with its own ``initdata`` and ``configmap``'s bundle. ``kernel_params``: the host boots
    another guest (Kata's annotation; the node's stand-in measures them into RTMR2)."""
    spec = copy.deepcopy(template["spec"])
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "bundle"] + [
        {"name": "bundle", "configMap": {"name": configmap, "items": volume_items(files)}}]
    annotations = {ANNOTATION: encode_annotation(initdata)}
    if kernel_params:
        annotations[KERNEL_PARAMS_ANNOTATION] = kernel_params
    return {"metadata": {"name": name, "annotations": annotations,
                         "labels": {"cmcp.dev/route": ROUTE, "app.kubernetes.io/component": "enclave"}},
            "spec": spec}


def test_rogue_pods_never_become_ready(cluster: Any, kube: Kube, operator: OperatorProcess) -> None:
    """Same labels and readiness gate as ours; one runs another bundle, one forges the audience,
    one is a forged guest: the operator's exact initdata and bundle, booted with another RTMR2."""
    current = route(kube)["status"]["bundleHash"]
    deployment = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{workload_name(ROUTE)}")
    template = deployment["spec"]["template"]
    launch = operator_launch(cluster.enclave_image)
    other_dir = EXAMPLES / "realistic"
    other = load_bundle(other_dir)
    files = read_bundle_files(other_dir)
    kube.create(f"/api/v1/namespaces/{NS}/configmaps", {
        "metadata": {"name": "rogue-bundle"}, "data": {path_to_key(p): t for p, t in files.items()}})
    other_initdata = render(CmcpEntry(other.bundle_hash, other.catalog_hash, other.enforcement_mode,
                                      f"{NS}/{ROUTE}", "http://echo-upstream.example/mcp"), launch=launch)
    ours = load_bundle(EXAMPLES / "minimal")
    ours_files = read_bundle_files(EXAMPLES / "minimal")
    forged = render(CmcpEntry(ours.bundle_hash, ours.catalog_hash, ours.enforcement_mode, f"{NS}/{ROUTE}",
                              "http://attacker.example/mcp"), launch=launch)
    kube.create(f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"name": "ours-copy"}, "data": {
        path_to_key(p): t for p, t in ours_files.items()}})
    watcher = EndpointWatcher(kube, allowed={current}).start()
    try:
        kube.create(f"/api/v1/namespaces/{NS}/pods",
                    _rogue_pod(template, "rogue-other-bundle", other_initdata, "rogue-bundle", files))
        kube.create(f"/api/v1/namespaces/{NS}/pods", _rogue_pod(
            template, "rogue-forged-audience", forged, "ours-copy", ours_files))
        ours_pod = next(p for p in enclave_pods(kube) if not p["metadata"]["name"].startswith("rogue-"))
        genuine = decode_annotation(ours_pod["metadata"]["annotations"][ANNOTATION])
        kube.create(f"/api/v1/namespaces/{NS}/pods", _rogue_pod(
            template, "rogue-forged-guest", genuine, "ours-copy", ours_files, kernel_params="init=/bin/sh"))

        def named() -> dict[str, dict[str, Any]] | None:
            entries = {e["pod"]: e for e in route(kube).get("status", {}).get("pods", [])}
            rogues = {k: v for k, v in entries.items() if k.startswith("rogue-") and v.get("platform")}
            return rogues if len(rogues) == 3 else None

        rogues = kube.wait_for("route status names the three rogue pods", named, timeout=180,
                               on_timeout=operator.log_tail)
        assert rogues["rogue-other-bundle"]["reason"] == "BundleHashMismatch"
        assert rogues["rogue-other-bundle"]["reportedBundleHash"] == other.bundle_hash
        assert rogues["rogue-forged-audience"]["reason"] == "InitdataUnexpected"
        # The forged guest passes every initdata check; only the release's RTMR2 refuses it.
        assert rogues["rogue-forged-guest"]["reason"] == "ReferenceValueMismatch"
        assert "RTMR2" in rogues["rogue-forged-guest"]["message"]
        assert not any(e["attested"] for e in rogues.values())
        time.sleep(6)  # a re-attestation period later, still out
        for name in rogues:
            pod = kube.get(f"/api/v1/namespaces/{NS}/pods/{name}")
            assert pod["spec"]["runtimeClassName"] == REAL_TDX_CLASS
            assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
            ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "False"
            assert pod["status"]["podIP"] not in ready_addresses(kube)
        assert route(kube)["status"]["attestedReplicas"] == 2
        assert cond(route(kube), "Ready")["status"] == "True"
        events = kube.get(f"/api/v1/namespaces/{NS}/events",
                          fieldSelector="involvedObject.name=rogue-other-bundle")["items"]
        assert any(e["reason"] == "AttestationFailed" and e["type"] == "Warning"
                   and e["involvedObject"].get("kind") == "Pod"
                   and "BundleHashMismatch" in e["message"] for e in events), events
    finally:
        watcher.stop()
        for name in ("rogue-other-bundle", "rogue-forged-audience", "rogue-forged-guest"):
            kube.delete(f"/api/v1/namespaces/{NS}/pods/{name}", gracePeriodSeconds=0)
    assert not watcher.violations, watcher.violations
    assert watcher.events >= 1  # the watch ran (a rogue never changes the slice)


def test_policy_edit_rolls_out_without_unattested_endpoints(cluster: Any, kube: Kube,
                                                            operator: OperatorProcess) -> None:
    old = route(kube)["status"]["bundleHash"]
    new = bundle_hash_of(EXAMPLES / "minimal", extra(1))
    watcher = EndpointWatcher(kube, allowed={old, new}).start()
    try:
        apply_bundle(cluster, EXAMPLES / "minimal", extra(1))
        # Once the rollout has started, only new-hash pods may be *added*.
        kube.wait_for("rollout started", lambda: route(kube)["status"].get("bundleHash") == new, timeout=60)
        watcher.allowed = {new}
        kube.wait_for("route Ready at the new hash", lambda: route_ready_at(kube, new), timeout=240,
                      on_timeout=operator.log_tail)
        kube.wait_for("old pods gone", lambda: all(pod_bundle_hash(p) == new for p in enclave_pods(kube)),
                      timeout=120)
        kube.wait_for("endpoints = new pods", lambda: ready_addresses(kube) == {
            p["status"]["podIP"] for p in enclave_pods(kube)} and len(ready_addresses(kube)) == 2, timeout=60)
    finally:
        watcher.stop()
    assert not watcher.violations, watcher.violations
    r = route(kube)
    assert r["status"].get("previous") is None
    assert cond(r, "RolloutInProgress")["status"] == "False"
    pb = kube.get(f"{GROUP_PATH}/policybundles/{BUNDLE}")
    assert [h["bundleHash"] for h in pb["status"]["history"]][-2:] == [old, new]
    assert verify_history(pb["status"]["history"], pb["status"]["historyHead"])
    events = kube.get(f"/api/v1/namespaces/{NS}/events",
                      fieldSelector=f"involvedObject.name={ROUTE}")["items"]
    assert {"RolloutStarted", "RolloutComplete"} <= {e["reason"] for e in events}


def test_operator_killed_mid_rollout_converges(cluster: Any, kube: Kube, operator: OperatorProcess) -> None:
    old = route(kube)["status"]["bundleHash"]
    new = bundle_hash_of(EXAMPLES / "minimal", extra(2))
    watcher = EndpointWatcher(kube, allowed={old, new}).start()
    try:
        apply_bundle(cluster, EXAMPLES / "minimal", extra(2))
        kube.wait_for("new pods created", lambda: any(pod_bundle_hash(p) == new for p in enclave_pods(kube)),
                      timeout=60, on_timeout=operator.log_tail)
        watcher.allowed = {new}
        operator.kill()
        time.sleep(3)  # nothing attests new pods while the operator is down
        assert all(pod_bundle_hash(p) == old for p in enclave_pods(kube)
                   if p["status"].get("podIP") in ready_addresses(kube))
        operator.start()
        kube.wait_for("route Ready at the new hash after restart", lambda: route_ready_at(kube, new),
                      timeout=240, on_timeout=operator.log_tail)
        kube.wait_for("old pods gone", lambda: all(pod_bundle_hash(p) == new for p in enclave_pods(kube))
                      and len(enclave_pods(kube)) == 2, timeout=120)
    finally:
        watcher.stop()
    assert not watcher.violations, watcher.violations

    def only_new() -> dict[str, Any] | None:
        r = route(kube)
        return r if {e.get("reportedBundleHash") for e in r["status"]["pods"]} == {new} else None

    r = kube.wait_for("status lists only new-hash pods", only_new, timeout=60)
    assert cond(r, "Degraded")["status"] == "False" and r["status"].get("previous") is None


def test_deleted_pod_leaves_endpoints_and_route_degrades_until_replaced(kube: Kube,
                                                                        operator: OperatorProcess) -> None:
    current = route(kube)["status"]["bundleHash"]
    victim = enclave_pods(kube)[0]
    ip = victim["status"]["podIP"]
    kube.delete(f"/api/v1/namespaces/{NS}/pods/{victim['metadata']['name']}")
    degraded = kube.wait_for("route Degraded", lambda: cond(route(kube), "Degraded").get("status") == "True",
                             timeout=30, interval=0.1)
    assert degraded
    kube.wait_for("victim out of endpoints", lambda: ip not in ready_addresses(kube), timeout=30)
    r = kube.wait_for("replacement attested", lambda: route_ready_at(kube, current), timeout=180,
                      on_timeout=operator.log_tail)
    assert cond(r, "Degraded")["status"] == "False"
    kube.wait_for("replacement in endpoints", lambda: len(ready_addresses(kube)) == 2, timeout=30)
    assert victim["metadata"]["name"] not in {e["pod"] for e in r["status"]["pods"]}


def test_metrics_exposed(operator: OperatorProcess) -> None:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    assert 'cmcp_operator_attestations_total{result="attested"}' in text
    assert f'cmcp_operator_attested_pods{{route="{NS}/{ROUTE}"}} 2.0' in text
    assert "cmcp_operator_attestation_duration_seconds_count" in text


def test_configmap_sourced_bundle_tracks_its_configmap(cluster: Any, kube: Kube,
                                                       operator: OperatorProcess) -> None:
    files = read_bundle_files(EXAMPLES / "minimal")
    doc = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "PolicyBundle",
           "metadata": {"name": "from-cm", "namespace": NS}, "spec": {"configMapRef": {"name": "src"}}}
    refused = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert refused.returncode != 0 and "ConfigMap 'src' not found" in refused.stderr, refused.stderr
    kube.create(f"/api/v1/namespaces/{NS}/configmaps", {
        "metadata": {"name": "src"}, "data": {path_to_key(p): t for p, t in files.items()}})
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    first = load_bundle(EXAMPLES / "minimal").bundle_hash

    def hash_is(value: str) -> bool:
        pb = kube.get(f"{GROUP_PATH}/policybundles/from-cm")
        return pb.get("status", {}).get("bundleHash") == value and cond(pb, "Valid").get("status") == "True"

    kube.wait_for("bundle hashed from its ConfigMap", lambda: hash_is(first), timeout=60)
    # The ConfigMap changes without the PolicyBundle changing: the periodic reconcile notices.
    kube.patch(f"/api/v1/namespaces/{NS}/configmaps/src", {"data": {"policies__extra.cedar": extra(9)}})
    edited = bundle_hash_of(EXAMPLES / "minimal", extra(9))
    kube.wait_for("new hash from the edited ConfigMap", lambda: hash_is(edited), timeout=60,
                  on_timeout=operator.log_tail)
    kube.delete(f"{GROUP_PATH}/policybundles/from-cm")


def test_bundle_in_use_is_protected_then_cleaned_up(kube: Kube, operator: OperatorProcess) -> None:
    kube.delete(f"{GROUP_PATH}/policybundles/{BUNDLE}")
    time.sleep(3)
    pb = kube.get(f"{GROUP_PATH}/policybundles/{BUNDLE}")  # still there: McpRoute echo uses it
    assert pb["metadata"].get("deletionTimestamp")
    assert "cmcp.dev/bundle-in-use" in pb["metadata"]["finalizers"]
    events = kube.get(f"/api/v1/namespaces/{NS}/events",
                      fieldSelector=f"involvedObject.name={BUNDLE}")["items"]
    assert any(e["reason"] == "BundleInUse" and ROUTE in e["message"] for e in events), events
    r = route(kube)
    assert cond(r, "Ready")["status"] == "True", r["status"]["conditions"]
    kube.delete(f"{GROUP_PATH}/mcproutes/{ROUTE}")
    kube.wait_for("route and bundle gone", lambda: not kube.get(f"{GROUP_PATH}/mcproutes")["items"]
                  and not [b for b in kube.get(f"{GROUP_PATH}/policybundles")["items"]
                           if b["metadata"]["name"] == BUNDLE], timeout=90, on_timeout=operator.log_tail)
    kube.wait_for("enclave Deployment garbage-collected", lambda: not kube.get(
        f"/apis/apps/v1/namespaces/{NS}/deployments")["items"], timeout=60)


def test_graceful_stop_keeps_only_the_pod_gate(cluster: Any, kube: Kube, operator: OperatorProcess) -> None:
    """Runs last: after a clean exit the bundle/route webhooks are gone, the pod gate stays."""
    operator.stop()
    cfg = kube.get(f"{WEBHOOKS}/cmcp-operator.cmcp.dev")
    names = {w["name"].split(".")[0] for w in cfg.get("webhooks") or []}
    assert names == {"validate-enclave-pod"}, names
    pod = {"metadata": {"name": "gateless-while-down", "labels": {"cmcp.dev/route": ROUTE}},
           "spec": {"containers": [{"name": "c", "image": cluster.enclave_image}]}}
    with pytest.raises(KubeError):  # the webhook's server is gone: Fail policy refuses
        kube.create(f"/api/v1/namespaces/{NS}/pods", pod)
