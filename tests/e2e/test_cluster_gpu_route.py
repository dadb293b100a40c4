"""A route that requires a GPU on the real node (issue 20): only pods with verified GPU evidence serve.

The operator is a host process (as in test_operator_lifecycle.py) with this run's enclave image,
``--runtime-class-tdx`` of a ``kata-qemu-tdx`` class (the node's OCI hook and TSM stand-in give the
enclave's real ``tdx`` provider software-only TDX evidence of its own initdata) and
``--gpu-provider simulated --allow-simulated``: a ``spec.gpu`` route's enclave pod runs
``--gpu simulated`` as a real container, attests CPU and GPU, and is routed. The host then starts
pods of its own wearing the route's labels, from the operator's pod template and with the
operator's exact initdata and bundle (runc enforces no launch policy, so only the relying party's
GPU check stands in the way): one without a GPU (``--gpu none``) and one whose GPU answers
another challenge (a replayed report). The operator never routes them and names the GPU code;
the operator's own appraisal with the route's GPU requirement dropped (the weakened operator)
admits both.

The node also advertises ``nvidia.com/pgpu`` the way Kubernetes documents node-level extended
resources, and a RuntimeClass of the GPU class name maps to the node's TDX handler: with
``--gpu-provider nvidia`` (the product's default) the enclave pod gets that class and requests that
resource, so it is placed by both on the real node; there is no GPU, so the enclave refuses to
start and never serves. (``--gpu-provider simulated`` needs no device: its pods keep the TDX class
and request no GPU, ADR 0030.)
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cmcp_core.attestation import Evidence
from cmcp_core.bundle import load_bundle
from cmcp_core.crd import API_PATH
from cmcp_core.digest import tagged_sha256
from cmcp_core.initdata import ANNOTATION, decode_annotation
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import appraise_response
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.release import DevRelease
from cmcp_operator.main import parse_args
from cmcp_operator.pod_appraisal import AppraisalSettings, allowed_tee, appraise_pod
from cmcp_operator.render_bundle import bundle_manifest, dump
from cmcp_operator.verifier import core_verifier
from cmcp_operator.workloads import workload_name

from .conftest import E2ECluster
from .workloads import is_ready, pods

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
NS = f"cmcp-gpu-{uuid.uuid4().hex[:6]}"
GROUP_PATH = f"{API_PATH}/namespaces/{NS}"
BUNDLE_DIR = REPO / "examples" / "minimal"
ROUTE, HW_ROUTE = "gpu", "gpu-hw"
TDX_CLASS = f"kata-qemu-tdx-{NS}"
GPU_CLASS = f"kata-qemu-nvidia-gpu-tdx-{NS}"  # the GPU class name, the node's TDX handler
GPU_RESOURCE = "nvidia.com/pgpu"
GPU_SPEC = {"vendor": "nvidia", "count": 1}
# The host's enclave whose GPU answers another challenge: the simulated GPU, asked for a fixed
# nonce instead of the one derived from this report's REPORT_DATA (a replayed GPU report).
REPLAYING_GPU = """import sys
from cmcp_enclave import gpu
from cmcp_enclave.main import main
answer = gpu.SimulatedGpuProvider.evidence
gpu.SimulatedGpuProvider.evidence = lambda self, nonce: answer(self, bytes(32))
sys.exit(main(sys.argv[1:]))
"""


class Operator:
    """``cmcp-operator`` as a host process with the real node's flags plus ``gpu_flags``."""

    def __init__(self, cluster: E2ECluster, release: DevRelease, log: Path, gpu_flags: list[str]) -> None:
        self.flags = ["--namespace", NS, "--reattest-interval", "5",
                      *cluster.real_operator_flags(TDX_CLASS, release),
                      "--runtime-class-gpu-tdx", GPU_CLASS, "--gpu-resource", GPU_RESOURCE, *gpu_flags]
        self.log = log
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("cmcp-operator")), *self.flags],
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
                                     start_new_session=True)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def kube(cluster: E2ECluster) -> Iterator[Kube]:
    """CRDs, the namespace, the two RuntimeClasses (TDX and GPU names, both the node's
    ``kata-qemu-tdx`` handler) and one ``nvidia.com/pgpu`` on the real node."""
    if not cluster.is_local:
        pytest.skip("needs the local plane's real node (images built in the run, the TSM stand-in)")
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "-f", str(crd))
    cluster.kube.wait_for("McpRoute served", lambda: cluster.kube.get(f"{API_PATH}/mcproutes"), timeout=60)
    cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    with (cluster.real_tdx_runtime_class(TDX_CLASS), cluster.real_tdx_runtime_class(GPU_CLASS),
          cluster.real_node_extended_resource(GPU_RESOURCE, 1)):
        try:
            cluster.kubectl("apply", "-f", "-", input=dump(bundle_manifest(BUNDLE_DIR, "minimal", NS)))
            yield cluster.kube
        finally:
            # The operators are stopped by now: their finalizers would hold the namespace forever.
            for plural in ("mcproutes", "policybundles"):
                for obj in cluster.kube.get(f"{GROUP_PATH}/{plural}")["items"]:
                    cluster.kube.patch(f"{GROUP_PATH}/{plural}/{obj['metadata']['name']}",
                                       {"metadata": {"finalizers": None}})
            cluster.kube.delete(f"/api/v1/namespaces/{NS}")
            cluster.kube.wait_for(f"namespace {NS} gone (its pods release {GPU_RESOURCE})", lambda: not [
                n for n in cluster.kube.get("/api/v1/namespaces")["items"] if n["metadata"]["name"] == NS],
                timeout=120)


@pytest.fixture(scope="module")
def operator(cluster: E2ECluster, kube: Kube, real_release: DevRelease,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(cluster, real_release, tmp_path_factory.mktemp("gpu-operator") / "operator.log",
                  ["--gpu-provider", "simulated"])
    yield op
    op.stop()


# ------------------------------------------------------------------------------ helpers
def route(kube: Kube, name: str = ROUTE) -> dict[str, Any]:
    return dict(kube.get(f"{GROUP_PATH}/mcproutes/{name}"))


def create_route(kube: Kube, name: str, replicas: int) -> None:
    kube.create(f"{GROUP_PATH}/mcproutes", {
        "apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "metadata": {"name": name},
        "spec": {"upstream": {"url": "http://gpu-upstream.example/mcp"},
                 "policyBundleRef": {"name": "minimal"}, "replicas": replicas, "tee": "tdx",
                 "gpu": GPU_SPEC}})


def ready_addresses(kube: Kube, name: str = ROUTE) -> set[str]:
    slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
                      labelSelector=f"kubernetes.io/service-name={workload_name(name)}")["items"]
    return {a for s in slices for ep in s.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready")
            for a in ep["addresses"]}


def attest(address: str, nonce: bytes) -> enclave_pb2.AttestResponse:
    with grpc.insecure_channel(f"{address}:50051") as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        return stub.Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=10)


def diagnostics(cluster: E2ECluster, op: Operator) -> str:
    logs = cluster.kubectl("logs", "-n", NS, "-l", "app.kubernetes.io/component=enclave", "--tail=15",
                           "--prefix", check=False)
    return "\n".join([cluster.diagnostics(), op.tail(), f"--- enclaves ---\n{logs.stdout}{logs.stderr}"])


class EndpointSampler:
    """Reads the route's EndpointSlices every 0.2 s while the rogues live; keeps every address seen ready."""

    def __init__(self, kube: Kube) -> None:
        self.kube, self.samples = kube, 0
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.seen |= ready_addresses(self.kube)
            self.samples += 1

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


# ------------------------------------------------------------------------------ tests
def test_gpu_route_pod_attests_cpu_and_gpu_and_is_routed(cluster: E2ECluster, kube: Kube,
                                                         operator: Operator) -> None:
    create_route(kube, ROUTE, replicas=1)

    def ready() -> dict[str, Any] | None:
        r = route(kube)
        conds = {c["type"]: c for c in r.get("status", {}).get("conditions", [])}
        ok = conds.get("Ready", {}).get("status") == "True" and r["status"].get("attestedReplicas") == 1
        return r if ok else None

    r = kube.wait_for("GPU route Ready", ready, timeout=240,
                      on_timeout=lambda: diagnostics(cluster, operator))
    assert r["status"]["gpu"] == {"vendor": "nvidia", "count": 1, "revocation": "not-checked"}
    [pod] = [p for p in pods(kube, NS, f"cmcp.dev/route={ROUTE}")
             if not p["metadata"].get("deletionTimestamp")]
    cluster.assert_real_enclave(pod, TDX_CLASS)
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--gpu") + 1] == "simulated"
    # The simulated provider needs no device: no GPU class, no extended resource (ADR 0030).
    assert GPU_RESOURCE not in (pod["spec"]["containers"][0].get("resources") or {}).get("requests", {})
    [entry] = r["status"]["pods"]
    assert entry["pod"] == pod["metadata"]["name"], entry
    assert entry["attested"] and entry["assurance"] == "software-only", entry
    gpu = entry["gpu"]
    assert (gpu["attested"], gpu["count"], gpu["revocation"]) == (True, 1, "not-checked"), gpu
    assert gpu["driverVersion"] and gpu["vbiosVersion"], gpu
    # The pod's own Attest carries one GPU envelope, which the operator's appraisal accepts.
    nonce = secrets.token_bytes(32)
    resp = attest(pod["status"]["podIP"], nonce)
    assert len(resp.gpu_evidence) == 1
    policy = parse_args(operator.flags).appraisal
    verdict = appraise_response(resp, nonce, policy, gpu=GpuRequirement.from_spec(GPU_SPEC))
    assert verdict.ok and verdict.assurance == "software-only", verdict
    assert [g.passed for g in verdict.gpus] == [True]
    kube.wait_for("pod Ready and in the EndpointSlice", lambda: is_ready(kube.get(
        f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}"))
        and ready_addresses(kube) == {pod["status"]["podIP"]}, timeout=60)


def _rogue(template: dict[str, Any], name: str, initdata_annotation: str, *, gpu: str,
           replaying: bool = False) -> dict[str, Any]:
    """The operator's pod template (image by digest, runtime class, readiness gate, bundle and
    initdata volumes) under the route's labels with the genuine pod's initdata; the host picks
    ``--gpu`` and, for ``replaying``, runs the enclave behind a GPU answering a fixed nonce."""
    spec = dict(template["spec"])
    container = dict(spec["containers"][0])
    args = list(container["args"])
    args[args.index("--gpu") + 1] = gpu
    container["args"] = args
    if replaying:
        container["command"] = ["python", "-c", REPLAYING_GPU]
    spec["containers"] = [container]
    return {"metadata": {"name": name, "annotations": {ANNOTATION: initdata_annotation},
                         "labels": {"cmcp.dev/route": ROUTE, "app.kubernetes.io/component": "enclave"}},
            "spec": spec}


ROGUES = {"rogue-no-gpu": ("GpuEvidenceMissing", "GPU_EVIDENCE_MISSING"),
          "rogue-replayed-gpu": ("GpuNonceMismatch", "GPU_NONCE_MISMATCH")}


def test_pod_whose_gpu_evidence_is_missing_or_fails_is_never_routed(cluster: E2ECluster, kube: Kube,
                                                                     operator: Operator) -> None:
    deployment = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{workload_name(ROUTE)}")
    template = deployment["spec"]["template"]
    [ours] = [p for p in pods(kube, NS, f"cmcp.dev/route={ROUTE}") if is_ready(p)]
    genuine = ours["metadata"]["annotations"][ANNOTATION]
    sampler = EndpointSampler(kube)
    try:
        kube.create(f"/api/v1/namespaces/{NS}/pods", _rogue(template, "rogue-no-gpu", genuine, gpu="none"))
        kube.create(f"/api/v1/namespaces/{NS}/pods", _rogue(template, "rogue-replayed-gpu", genuine,
                                                             gpu="simulated", replaying=True))

        def named() -> dict[str, dict[str, Any]] | None:
            entries = {e["pod"]: e for e in route(kube).get("status", {}).get("pods", [])}
            rogues = {k: v for k, v in entries.items() if k in ROGUES and v.get("gpu")}
            return rogues if len(rogues) == len(ROGUES) else None

        rogues = kube.wait_for("route status names both rogues' GPU failures", named, timeout=180,
                               on_timeout=lambda: diagnostics(cluster, operator))
        for name, (reason, code) in ROGUES.items():
            assert (rogues[name]["reason"], rogues[name]["attested"]) == (reason, False), rogues[name]
            gpu = rogues[name]["gpu"]
            assert (gpu["code"], gpu["attested"]) == (code, False), rogues[name]
        assert rogues["rogue-no-gpu"]["gpu"]["count"] == 0
        time.sleep(6)  # a re-attestation period later, still out
        live = {name: kube.get(f"/api/v1/namespaces/{NS}/pods/{name}") for name in ROGUES}
        for pod in live.values():
            assert pod["spec"]["nodeName"] == REAL_NODE_NAME and not is_ready(pod)
            assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
            assert pod["status"]["containerStatuses"][0]["state"].get("running"), pod["status"]
        r = route(kube)
        assert r["status"]["attestedReplicas"] == 1
    finally:
        seen = sampler.stop()
    rogue_ips = {p["status"]["podIP"] for p in live.values()}
    assert seen == {ours["status"]["podIP"]} and sampler.samples > 10, (seen, sampler.samples)
    assert not seen & rogue_ips

    # The weakened operator: its own appraisal of each rogue's fresh evidence, the route's GPU
    # requirement dropped, admits both; with the requirement it refuses with the status's codes.
    config = parse_args(operator.flags)
    initdata = decode_annotation(genuine)
    bundle = load_bundle(BUNDLE_DIR)
    accepted = {tagged_sha256(initdata): bundle.bundle_hash}  # the one revision the route serves
    for name, (reason, _) in ROGUES.items():
        nonce = secrets.token_bytes(32)
        ev = Evidence.from_response(attest(live[name]["status"]["podIP"], nonce))
        assert ev.initdata == initdata
        verdicts = {}
        for label, requirement in (("blind", None), ("route", GpuRequirement.from_spec(GPU_SPEC))):
            settings = AppraisalSettings(allowed_tee=allowed_tee("tdx", allow_simulated=True),
                                         policy=config.appraisal, gpu=requirement)
            verdicts[label] = appraise_pod(ev, nonce=nonce, pod_initdata=initdata, route=f"{NS}/{ROUTE}",
                                           accepted=accepted, settings=settings, verifier=core_verifier())
        assert verdicts["blind"].attested, (name, verdicts["blind"])
        refused = verdicts["route"]
        assert (refused.attested, refused.reason) == (False, reason), (name, refused)
    for name in ROGUES:
        kube.delete(f"/api/v1/namespaces/{NS}/pods/{name}", gracePeriodSeconds=0)


def test_nvidia_provider_pod_is_placed_by_gpu_class_and_resource_and_fails_closed(
        cluster: E2ECluster, kube: Kube, operator: Operator, real_release: DevRelease,
        tmp_path: Path) -> None:
    """The product's default provider: the pod asks for the GPU class and one ``nvidia.com/pgpu``;
    the node has one, so one of two replicas runs there and the other stays Pending; with no GPU
    (no NVML) the enclave refuses to start, so nothing is attested or routed."""
    kube.delete(f"{GROUP_PATH}/mcproutes/{ROUTE}")
    kube.wait_for("the simulated route's pods gone", lambda: not pods(kube, NS, f"cmcp.dev/route={ROUTE}"),
                  timeout=120, on_timeout=lambda: diagnostics(cluster, operator))
    operator.stop()
    hw = Operator(cluster, real_release, tmp_path / "operator-nvidia.log", ["--gpu-provider", "nvidia"])
    try:
        create_route(kube, HW_ROUTE, replicas=2)

        def placed() -> tuple[dict[str, Any], dict[str, Any]] | None:
            found = pods(kube, NS, f"cmcp.dev/route={HW_ROUTE}")
            bound = [p for p in found if p["spec"].get("nodeName")
                     and (p["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1]
            pending = [p for p in found if not p["spec"].get("nodeName") and any(
                c["type"] == "PodScheduled" and c["status"] == "False"
                and f"Insufficient {GPU_RESOURCE}" in c.get("message", "")
                for c in p["status"].get("conditions", []))]
            return (bound[0], pending[0]) if len(bound) == 1 and len(pending) == 1 else None

        running, pending = kube.wait_for("one GPU pod bound (restarting), one Pending for the resource",
                                         placed, timeout=240, on_timeout=lambda: diagnostics(cluster, hw))
        for pod in (running, pending):
            container = pod["spec"]["containers"][0]
            assert pod["spec"]["runtimeClassName"] == GPU_CLASS
            assert container["resources"]["requests"][GPU_RESOURCE] == "1"
            assert container["resources"]["limits"][GPU_RESOURCE] == "1"
            assert container["args"][container["args"].index("--gpu") + 1] == "nvidia"
        assert running["spec"]["nodeName"] == REAL_NODE_NAME and not is_ready(running)
        name = running["metadata"]["name"]
        logs = cluster.kubectl("logs", "-n", NS, name, "--previous", check=False).stdout
        assert "TEE_PROVIDER_FAILED" in logs, logs
        r = route(kube, HW_ROUTE)
        assert r["status"].get("attestedReplicas", 0) == 0, r["status"]
        assert not ready_addresses(kube, HW_ROUTE)
        assert r["status"]["gpu"] == {"vendor": "nvidia", "count": 1, "revocation": "not-checked"}
        assert not any(e.get("attested") for e in r["status"].get("pods", []))
    finally:
        hw.stop()
