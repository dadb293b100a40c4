"""The enclave image on the real node, through the kata handler's OCI hook and the TSM stand-in.

The attacker is the host: it launches an enclave pod whose annotation (what the hypervisor
measures) names one initdata, and hands the container another file at the path the enclave
reads. The enclave's production ``--tee tdx`` provider asks the TSM at ``/sys/kernel/config/tsm``
for a fresh quote, re-hashes the handed file against its MRCONFIGID and refuses to start with
``INITDATA_MISMATCH`` (container status and ``kubectl logs``). The same pod with the downward-API
file of its own annotation starts, and its Attest evidence appraises as ``software-only`` (only
with ``allow_simulated``). The same holds under the ``kata-qemu-snp`` handler with ``--tee snp``:
the production SNP provider reads a simulated SNP report whose HOST_DATA is the annotation's
digest (``simulated-snp`` evidence). A weakened stand-in (test code) that measures the handed file
instead lets the attacker's pods (TDX and SNP) start: the refusals above are what catch that hole.

The enclave image is built from this checkout (``cmcp_devkit.images``) and imported with ``ctr``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cmcp_core import initdata
from cmcp_core.errors import Code
from cmcp_core.evidence.simulated_snp import verify_simulated_report
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.appraise import appraise_response
from cmcp_devkit import images
from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME, LocalCluster, NodeSpec
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.cluster.node import missing_prerequisites
from cmcp_devkit.enclave import render_initdata
from cmcp_devkit.release import dev_appraisal
from cmcp_operator.bundles import path_to_key
from cmcp_operator.constants import INITDATA_DIR, INITDATA_FILE, INITDATA_PATH
from tests.paths import EXAMPLES

from .workloads import wait_pod

_WHY_NOT = missing_prerequisites() or (
    "the real node runs on the local plane only" if os.environ.get("CMCP_E2E_KUBECONFIG") else None
)
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

Obj = dict[str, Any]
NS = "default"
BUNDLE = EXAMPLES / "minimal"
IMAGE = f"localhost/cmcp-enclave:{images.VERSION}"
MEASURED = render_initdata(BUNDLE)  # the pod's annotation: what the hook has measured
HANDED = render_initdata(BUNDLE, audience="urn:cmcp:attacker")  # same bundle, other initdata
BUNDLE_FILES = {str(p.relative_to(BUNDLE)): p.read_text() for p in sorted(BUNDLE.rglob("*")) if p.is_file()}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def enclave_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The enclave image of this checkout (``CMCP_E2E_ENCLAVE_ARCHIVE`` names a prebuilt one)."""
    prebuilt = os.environ.get("CMCP_E2E_ENCLAVE_ARCHIVE")
    if prebuilt:
        return Path(prebuilt)
    try:
        images.tools()
    except images.ImagesError as exc:
        pytest.skip(str(exc))
    t0 = time.monotonic()
    (built,) = images.build_all(tmp_path_factory.mktemp("images"), ["enclave"])
    TIMINGS["enclave_image_build_seconds"] = time.monotonic() - t0
    return Path(built.archive)


@pytest.fixture(scope="module")
def real(enclave_archive: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(nodes=[NodeSpec("plain-node-1")], real_node=True)
    try:
        cluster.start()
        cluster.import_image(enclave_archive)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def kube(real: LocalCluster) -> Iterator[Kube]:
    k = Kube.from_kubeconfig(real.kubeconfig)
    k.create(f"/api/v1/namespaces/{NS}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bundle"},
        "data": {path_to_key(path): text for path, text in BUNDLE_FILES.items()}})
    k.create(f"/api/v1/namespaces/{NS}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "handed-initdata"},
        "data": {INITDATA_FILE: initdata.encode_annotation(HANDED)}})
    yield k
    k.close()


def _enclave_pod(name: str, *, handed: bool, tee: str = "tdx") -> Obj:
    """An enclave pod as the operator renders it (downward-API initdata, ``--tee tdx`` under
    ``kata-qemu-tdx``, or ``snp`` under ``kata-qemu-snp``), or with the attacker's file at the
    initdata path instead."""
    initdata_volume: Obj = (
        {"name": "initdata", "configMap": {"name": "handed-initdata"}} if handed else
        {"name": "initdata", "downwardAPI": {"items": [{"path": INITDATA_FILE, "fieldRef": {
            "fieldPath": f"metadata.annotations['{initdata.ANNOTATION}']"}}]}})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name,
                     "annotations": {initdata.ANNOTATION: initdata.encode_annotation(MEASURED)}},
        "spec": {
            "runtimeClassName": f"kata-qemu-{tee}",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "enclave", "image": IMAGE, "imagePullPolicy": "Never",
                "args": ["--bundle", "/etc/cmcp/bundle", "--initdata-annotation", INITDATA_PATH,
                         "--tee", tee, "--listen", "$(POD_IP):50051"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "volumeMounts": [{"name": "bundle", "mountPath": "/etc/cmcp/bundle", "readOnly": True},
                                 {"name": "initdata", "mountPath": INITDATA_DIR, "readOnly": True}],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "bundle", "configMap": {"name": "bundle", "items": [
                {"key": path_to_key(path), "path": path} for path in sorted(BUNDLE_FILES)]}},
                initdata_volume],
        },
    }


def _terminated(pod: Obj) -> Obj | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if "terminated" in status.get("state", {}):
            return dict(status["state"]["terminated"])
    return None


def _serving(real: LocalCluster, name: str) -> bool:
    out = real.kubectl("logs", name, check=False).stdout
    return '"serving"' in out


def _attest(pod: Obj) -> tuple[Any, bytes]:
    nonce = secrets.token_bytes(32)
    with grpc.insecure_channel(f"{pod['status']['podIP']}:50051") as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        return stub.Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=20), nonce


def _diag(real: LocalCluster, name: str) -> Any:
    def diag() -> str:
        logs = real.kubectl("logs", name, check=False)
        hook_log = real.real_node.paths.tsm_hook_log if real.real_node else None
        hooks = hook_log.read_text() if hook_log and hook_log.exists() else ""
        return (f"logs: {logs.stdout}{logs.stderr}\nhook log:\n{hooks}\n"
                f"{real.log_tail('kubelet', 'containerd', 'tsm-standin')}")
    return diag


def test_enclave_handed_other_initdata_is_refused_at_start(real: LocalCluster, kube: Kube) -> None:
    t0 = time.monotonic()
    kube.create(f"/api/v1/namespaces/{NS}/pods", _enclave_pod("attacker", handed=True))
    pod = wait_pod(kube, NS, "attacker", "to stop", _terminated, timeout=180, diag=_diag(real, "attacker"))
    TIMINGS["refused_seconds"] = time.monotonic() - t0
    assert pod["spec"]["nodeName"] == REAL_NODE_NAME
    state = _terminated(pod)
    assert state is not None and state["exitCode"] == 3, state
    logs = kube.wait_for("kubectl logs attacker",
                         lambda: real.kubectl("logs", "attacker", check=False).stdout, timeout=30)
    assert f'"error": "{Code.INITDATA_MISMATCH.value}"' in logs, logs
    assert "measured config field of a fresh report" in logs  # the TSM answered: not a provider failure


def test_enclave_with_its_own_annotation_starts_and_attests_software_only(real: LocalCluster,
                                                                          kube: Kube) -> None:
    t0 = time.monotonic()
    kube.create(f"/api/v1/namespaces/{NS}/pods", _enclave_pod("honest", handed=False))
    kube.wait_for("the honest enclave serving", lambda: _serving(real, "honest"), timeout=180,
                  on_timeout=_diag(real, "honest"))
    TIMINGS["serving_seconds"] = time.monotonic() - t0
    pod = kube.get(f"/api/v1/namespaces/{NS}/pods/honest")
    assert _terminated(pod) is None
    response, nonce = _attest(pod)
    assert response.platform == "simulated"  # the production tdx provider, labelling the stand-in's quote
    assert bytes(response.initdata) == MEASURED
    verdict = appraise_response(response, nonce, dev_appraisal(), expected_initdata=MEASURED)
    assert verdict.ok and verdict.assurance == "software-only", verdict.message
    strict = appraise_response(response, nonce, AppraisalPolicy(releases=dev_appraisal().releases))
    assert not strict.ok and strict.code == Code.SIMULATED_NOT_ALLOWED.value
    # nothing of the stand-in but the TSM reaches the container: no CMCP_SIM_* variable, no file
    assert real.real_node is not None
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    env = real.real_node.ctr.container_info(cid)["Spec"]["process"]["env"]
    assert not [e for e in env if e.startswith("CMCP_")], env


def test_snp_enclave_handed_other_initdata_is_refused_at_start(real: LocalCluster, kube: Kube) -> None:
    """The attack under ``kata-qemu-snp``: HOST_DATA of the annotation, another file handed."""
    t0 = time.monotonic()
    kube.create(f"/api/v1/namespaces/{NS}/pods", _enclave_pod("attacker-snp", handed=True, tee="snp"))
    pod = wait_pod(kube, NS, "attacker-snp", "to stop", _terminated, timeout=180,
                   diag=_diag(real, "attacker-snp"))
    TIMINGS["snp_refused_seconds"] = time.monotonic() - t0
    assert pod["spec"]["nodeName"] == REAL_NODE_NAME and pod["spec"]["runtimeClassName"] == "kata-qemu-snp"
    state = _terminated(pod)
    assert state is not None and state["exitCode"] == 3, state
    logs = kube.wait_for("kubectl logs attacker-snp",
                         lambda: real.kubectl("logs", "attacker-snp", check=False).stdout, timeout=30)
    assert f'"error": "{Code.INITDATA_MISMATCH.value}"' in logs, logs
    assert "measured config field of a fresh report" in logs  # the SNP TSM answered
    assert Code.TEE_PROVIDER_FAILED.value not in logs


def test_snp_enclave_with_its_own_annotation_starts_and_attests_software_only(real: LocalCluster,
                                                                              kube: Kube) -> None:
    t0 = time.monotonic()
    kube.create(f"/api/v1/namespaces/{NS}/pods", _enclave_pod("honest-snp", handed=False, tee="snp"))
    kube.wait_for("the honest SNP enclave serving", lambda: _serving(real, "honest-snp"), timeout=180,
                  on_timeout=_diag(real, "honest-snp"))
    TIMINGS["snp_serving_seconds"] = time.monotonic() - t0
    pod = kube.get(f"/api/v1/namespaces/{NS}/pods/honest-snp")
    assert _terminated(pod) is None and pod["spec"]["nodeName"] == REAL_NODE_NAME
    response, nonce = _attest(pod)
    assert response.platform == "simulated-snp"  # the production snp provider, labelling the report
    assert bytes(response.initdata) == MEASURED
    report = verify_simulated_report(bytes(response.evidence), bytes(response.aux))
    assert report.host_data == initdata.snp_host_data(MEASURED)  # its own annotation's digest
    verdict = appraise_response(response, nonce, dev_appraisal(), expected_initdata=MEASURED)
    assert verdict.ok and verdict.assurance == "software-only", verdict.message
    assert verdict.measurements["host_data"] == initdata.snp_host_data(MEASURED).hex()
    strict = appraise_response(response, nonce, AppraisalPolicy(releases=dev_appraisal().releases))
    assert not strict.ok and strict.code == Code.SIMULATED_NOT_ALLOWED.value
    as_hardware = appraise_response(_relabelled(response, "snp"), nonce, dev_appraisal())
    assert not as_hardware.ok and as_hardware.code == Code.EVIDENCE_UNSUPPORTED.value


def _relabelled(response: Any, platform: str) -> Any:
    copy = enclave_pb2.AttestResponse()
    copy.CopyFrom(response)
    copy.platform = platform
    return copy


def _not_started(pod: Obj) -> str | None:
    """``reason: message`` of a container the runtime failed to create or start, else None."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state = status.get("state", {})
        failed = state.get("terminated") or state.get("waiting") or {}
        if failed.get("reason") not in (None, "ContainerCreating", "Completed", "Error"):
            return f"{failed['reason']}: {failed.get('message', '')}"
    return None


def test_undecodable_initdata_is_refused_by_the_hook_as_kata_refuses_the_sandbox(real: LocalCluster,
                                                                                 kube: Kube) -> None:
    pod = _enclave_pod("undecodable", handed=False)
    pod["metadata"]["annotations"][initdata.ANNOTATION] = "not base64 of gzip!"
    kube.create(f"/api/v1/namespaces/{NS}/pods", pod)
    seen = wait_pod(kube, NS, "undecodable", "to be refused", _not_started, timeout=120,
                    diag=_diag(real, "undecodable"))
    reason = _not_started(seen) or ""
    assert reason.startswith(("StartError", "CreateContainerError", "RunContainerError")), reason
    assert "hook" in reason, reason  # runc ran the hook, which refused: the enclave never ran
    assert real.kubectl("logs", "undecodable", check=False).stdout == ""


def _swap_standin(real: LocalCluster, argv: list[str]) -> subprocess.Popen[bytes]:
    """Stop the node's stand-in and serve ``argv``'s at the same mount point."""
    assert real.real_node is not None
    proc = next(p for p in real.procs if p.name == "tsm-standin")
    os.killpg(proc.popen.pid, signal.SIGTERM)
    proc.popen.wait(20)
    real.procs.remove(proc)
    paths = real.real_node.paths
    weak = subprocess.Popen([*argv, "--mount", str(paths.tsm_mount), "--registry",
                             str(paths.tsm_registry)], start_new_session=True)
    deadline = time.monotonic() + 60
    while not real.real_node.tsm_standin_ready():
        assert weak.poll() is None and time.monotonic() < deadline, "the weakened stand-in did not mount"
        time.sleep(0.1)
    return weak


def test_a_stand_in_measuring_the_handed_file_lets_the_attacker_start(real: LocalCluster,
                                                                      kube: Kube) -> None:
    """Weakened component: the same attack is not refused once the host measures the guest's file,
    under either handler (this test swaps the node's stand-in, so it runs last)."""
    weak = _swap_standin(real, [sys.executable, "-m", "tests.helpers.weakened_tsm_standin",
                                "--handed-file", INITDATA_PATH])
    try:
        for name, tee in (("attacker-2", "tdx"), ("attacker-snp-2", "snp")):
            kube.create(f"/api/v1/namespaces/{NS}/pods", _enclave_pod(name, handed=True, tee=tee))
        for name in ("attacker-2", "attacker-snp-2"):
            kube.wait_for(f"the attacker's enclave {name} serving", lambda n=name: _serving(real, n),
                          timeout=180, on_timeout=_diag(real, name))
            assert _terminated(kube.get(f"/api/v1/namespaces/{NS}/pods/{name}")) is None
    finally:
        weak.terminate()
        weak.wait(20)
    print(f"\ntsm stand-in timings: {', '.join(f'{k}={v:.1f}' for k, v in TIMINGS.items())}")
