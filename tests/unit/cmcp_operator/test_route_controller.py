"""One pass of the McpRoute loop against an in-memory Kube: a missing, a not-yet-valid and a
ready PolicyBundle; the Deployment/Service it applies; pods attested with real simulated
evidence and the real verifier; the exact status, conditions (with observedGeneration),
readiness-gate patches and Events."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.attestation import Evidence
from cmcp_core.binding import Binding, gpu_nonce
from cmcp_core.bundle import read_bundle_files
from cmcp_core.crypto import public_bytes, public_jwk, thumbprint
from cmcp_core.digest import tagged_sha256
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.initdata import (
    ANNOTATION,
    CmcpEntry,
    decode_annotation,
    encode_annotation,
    parse,
    render,
    tdx_mrconfigid,
)
from cmcp_core.verify import appraise as core_appraise
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_appraisal, dev_release
from cmcp_enclave.gpu import SimulatedGpuProvider
from cmcp_enclave.simulated import SimulatedGuest
from cmcp_operator import route_controller
from cmcp_operator.bundle_controller import BundleController
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import BUNDLE_PLURAL, ROUTE_LABEL, ROUTE_PLURAL
from cmcp_operator.pod_appraisal import camel
from cmcp_operator.route_controller import FAST_POLL, RouteController
from cmcp_operator.verifier import core_verifier
from tests.paths import EXAMPLES
from tests.unit.cmcp_operator.fakes import FakeEvents, FakeKube

EXAMPLE = EXAMPLES / "minimal"
NS, ROUTE, DEPLOY = "team", "r", "cmcp-r"
CONFIG = OperatorConfig(namespaces=(NS,), appraisal=dev_appraisal(), enclave_image=TEST_IMAGE,
                        reattest_interval=30.0)
SPEC = {"policyBundleRef": {"name": "b"}, "tee": "simulated", "replicas": 1,
        "upstream": {"url": "http://up.team.svc:8080/mcp"}}


class SimulatedEnclaves:
    """Answers Attest for any address like an honest simulated enclave would, for the initdata
    the pod at that address carries, in ``guest`` (the genuine simulated guest unless a test
    swaps in a forged one); ``fetched`` records the addresses asked."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.fetched: list[str] = []
        self.key = Ed25519PrivateKey.generate().public_key()
        self.guest = SimulatedGuest()

    async def __call__(self, address: str, *, deadline: float) -> tuple[bytes, Evidence]:
        self.fetched.append(address)
        pod = next(p for p in self.kube.pods.values() if p["status"].get("podIP") == address)
        toml = decode_annotation(pod["metadata"]["annotations"][ANNOTATION])
        entry = parse(toml).cmcp
        nonce = b"n" * 32
        rd = Binding(public_bytes(self.key), entry.bundle_hash, entry.catalog_hash, entry.enforcement_mode,
                     nonce).report_data()
        quote = SimulatedQuoteSigner().quote(rd, tdx_mrconfigid(toml), mrtd=self.guest.mrtd,
                                             rtmrs=(*self.guest.rtmrs, b"\0" * 48))
        return nonce, Evidence("simulated", quote, b"", toml, json.dumps(public_jwk(self.key)),
                               entry.bundle_hash, entry.catalog_hash, entry.enforcement_mode, rd)


@pytest.fixture
def kube() -> FakeKube:
    kube = FakeKube()
    kube.put(ROUTE_PLURAL, {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute",
                            "metadata": {"name": ROUTE, "namespace": NS, "uid": "uid-r", "generation": 3},
                            "spec": SPEC})
    return kube


@pytest.fixture
def events() -> FakeEvents:
    return FakeEvents()


@pytest.fixture
def enclaves(kube: FakeKube) -> SimulatedEnclaves:
    return SimulatedEnclaves(kube)


@pytest.fixture
def controller(kube: FakeKube, events: FakeEvents, enclaves: SimulatedEnclaves) -> RouteController:
    return RouteController(kube, CONFIG, core_verifier(), events, fetch=enclaves)  # type: ignore[arg-type]


async def publish_bundle(kube: FakeKube) -> dict[str, Any]:
    body = kube.put(BUNDLE_PLURAL, {"apiVersion": "cmcp.dev/v1alpha1", "kind": "PolicyBundle",
                                    "metadata": {"name": "b", "namespace": NS, "uid": "uid-b",
                                                 "generation": 1},
                                    "spec": {"files": read_bundle_files(EXAMPLE)}})
    return await BundleController(kube, FakeEvents()).reconcile(body)  # type: ignore[arg-type]


def start_pod(kube: FakeKube, name: str = "cmcp-r-5d8f-abcde", ip: str = "10.0.0.5",
              annotation: str | None = None, ready: bool = True) -> dict[str, Any]:
    """A Running pod of the applied Deployment, carrying its template's initdata annotation."""
    template = kube.applied[("Deployment", NS, DEPLOY)]["spec"]["template"]
    initdata = annotation or template["metadata"]["annotations"][ANNOTATION]
    pod = {"metadata": {"name": name, "namespace": NS, "uid": "uid-" + name, "labels": {ROUTE_LABEL: ROUTE},
                        "annotations": {ANNOTATION: initdata},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": DEPLOY + "-5d8f"}]},
           "spec": {"nodeName": "node-1"},
           "status": {"phase": "Running", "podIP": ip,
                      "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    kube.pods[(NS, name)] = pod
    return pod


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, int]]:
    return {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]}


def route_status(kube: FakeKube) -> dict[str, Any]:
    return kube.custom[(ROUTE_PLURAL, NS, ROUTE)]["status"]  # type: ignore[no-any-return]


async def test_missing_bundle_is_named_and_nothing_is_deployed(controller: RouteController, kube: FakeKube,
                                                               events: FakeEvents) -> None:
    delay = await controller.step(NS, ROUTE)
    assert delay == FAST_POLL  # no pod yet where one is wanted
    assert [c[0] for c in kube.calls] == ["patch_status"]
    status = kube.calls[0][4]  # the merge patch as sent ("previous": None clears the field)
    assert conditions(status) == {
        "Attested": ("False", "NoExpectedBundle", 3),
        "Degraded": ("True", "InsufficientAttestedPods", 3),
        "RolloutInProgress": ("False", "Complete", 3),
        "Ready": ("False", "BundleNotReady", 3)}
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "PolicyBundle 'b' not found"
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "replicas": 0, "attestedReplicas": 0, "readyReplicas": 0, "updatedReplicas": 0,
        "attestedSummary": "0/1", "pods": [], "previous": None, "gpu": None, "observedGeneration": 3,
        "serviceName": DEPLOY, "deploymentName": DEPLOY}
    assert events.reasons() == ["AttestedFalse", "DegradedTrue", "RolloutInProgressFalse", "ReadyFalse"]


async def test_bundle_not_reconciled_yet_is_not_ready(controller: RouteController, kube: FakeKube) -> None:
    kube.put(BUNDLE_PLURAL, {"metadata": {"name": "b", "namespace": NS, "uid": "uid-b", "generation": 1},
                             "spec": {}})
    await controller.step(NS, ROUTE)
    ready = next(c for c in route_status(kube)["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == ("BundleNotReady",
                                                   "PolicyBundle 'b' is not valid: not reconciled yet")
    assert not kube.writes("apply")


async def test_ready_bundle_deploys_and_waits_for_pods(controller: RouteController, kube: FakeKube,
                                                       events: FakeEvents) -> None:
    bundle = await publish_bundle(kube)
    kube.calls.clear()
    assert await controller.step(NS, ROUTE) == FAST_POLL
    assert kube.writes("apply") == [("apply", "Service", NS, DEPLOY), ("apply", "Deployment", NS, DEPLOY)]
    template = kube.applied[("Deployment", NS, DEPLOY)]["spec"]["template"]
    toml = decode_annotation(template["metadata"]["annotations"][ANNOTATION])
    assert parse(toml).cmcp.bundle_hash == bundle["bundleHash"]
    assert parse(toml).cmcp.route == f"{NS}/{ROUTE}"

    status = route_status(kube)
    assert status["bundleHash"] == bundle["bundleHash"]
    assert status["initdataDigest"] == tagged_sha256(toml)
    assert status["catalogHash"] == bundle["catalogHash"] and status["enforcementMode"] == "enforce"
    assert conditions(status) == {
        "Attested": ("False", "AttestationIncomplete", 3),
        "Degraded": ("True", "InsufficientAttestedPods", 3),
        "RolloutInProgress": ("False", "Complete", 3),
        "Ready": ("False", "NotEnoughAttested", 3)}
    assert events.posted[0] == ("McpRoute", ROUTE, "Normal", "RolloutStarted",
                                f"expected bundle {bundle['bundleHash']} (initdata {tagged_sha256(toml)})")


async def test_attested_pod_is_gated_in_and_published(
        controller: RouteController, kube: FakeKube, events: FakeEvents, enclaves: SimulatedEnclaves) -> None:
    bundle = await publish_bundle(kube)
    await controller.step(NS, ROUTE)
    pod = start_pod(kube)
    events.posted.clear()
    kube.calls.clear()
    assert await controller.step(NS, ROUTE) == CONFIG.reattest_interval  # settled: slow clock

    assert enclaves.fetched == ["10.0.0.5"]
    assert kube.writes("set_attested_condition") == [("set_attested_condition", NS, pod["metadata"]["name"],
                                                      True, "Attested")]
    status = route_status(kube)
    entry = status["pods"][0]
    assert entry == {
        "pod": "cmcp-r-5d8f-abcde", "uid": "uid-cmcp-r-5d8f-abcde", "node": "node-1", "address": "10.0.0.5",
        "attested": True, "platform": "simulated", "reportedBundleHash": bundle["bundleHash"],
        "reason": "Attested", "message": "evidence verified (software-only)", "current": True,
        "lastAttested": entry["lastAttested"], "keyThumbprint": thumbprint(enclaves.key),
        "publicKeyJwk": public_jwk(enclaves.key), "assurance": "software-only"}
    assert (status["replicas"], status["attestedReplicas"], status["readyReplicas"],
            status["attestedSummary"]) == (1, 1, 1, "1/1")
    assert conditions(status) == {
        "Attested": ("True", "AllAttested", 3),
        "Degraded": ("False", "Healthy", 3),
        "RolloutInProgress": ("False", "Complete", 3),
        "Ready": ("True", "Attested", 3)}
    assert ("Pod", pod["metadata"]["name"], "Normal", "PodAttested",
            "Attested: evidence verified (software-only)") in events.posted
    assert {"AttestedTrue", "DegradedFalse", "ReadyTrue"} <= set(events.reasons())

    # Nothing changed: the next pass neither re-attests nor writes.
    kube.calls.clear()
    await controller.step(NS, ROUTE)
    assert enclaves.fetched == ["10.0.0.5"] and kube.calls == []


async def test_a_forged_guest_is_never_routed(controller: RouteController, kube: FakeKube,
                                              enclaves: SimulatedEnclaves,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod carries the operator's own initdata, but its launcher booted another guest (RTMR2):
    the readiness gate stays False and status.pods says why, so no relying party routes to it."""
    await publish_bundle(kube)
    await controller.step(NS, ROUTE)
    pod = start_pod(kube)
    enclaves.guest = SimulatedGuest(rtmrs=(*SimulatedGuest().rtmrs[:2], b"\x66" * 48))
    kube.calls.clear()
    assert await controller.step(NS, ROUTE) == FAST_POLL
    assert kube.writes("set_attested_condition") == [("set_attested_condition", NS, pod["metadata"]["name"],
                                                      False, "ReferenceValueMismatch")]
    entry = route_status(kube)["pods"][0]
    assert entry["attested"] is False and entry["reason"] == "ReferenceValueMismatch"
    assert "RTMR2" in entry["message"] and "keyThumbprint" not in entry
    assert route_status(kube)["attestedReplicas"] == 0
    # Weakened: with the release comparison gone the same forged guest is attested and routed.
    monkeypatch.setattr(core_appraise, "match_release", lambda *_args: dev_release())
    controller.pods.clear()
    await controller.step(NS, ROUTE)
    assert route_status(kube)["pods"][0]["attested"] is True


async def test_pod_with_foreign_initdata_is_rejected_by_name(controller: RouteController, kube: FakeKube,
                                                             events: FakeEvents) -> None:
    await publish_bundle(kube)
    await controller.step(NS, ROUTE)
    rogue = render(CmcpEntry("sha256:" + "ee" * 32, "sha256:" + "cc" * 32, "enforce", f"{NS}/{ROUTE}",
                             SPEC["upstream"]["url"]), image=TEST_IMAGE, command=["cmcp-enclave"])  # type: ignore[index]
    pod = start_pod(kube, annotation=encode_annotation(rogue))
    kube.calls.clear()
    assert await controller.step(NS, ROUTE) == FAST_POLL
    assert kube.writes("set_attested_condition") == [("set_attested_condition", NS, pod["metadata"]["name"],
                                                      False, "BundleHashMismatch")]
    status = route_status(kube)
    assert status["pods"][0]["attested"] is False and status["pods"][0]["reason"] == "BundleHashMismatch"
    assert conditions(status)["Attested"] == ("False", "PodsRejected", 3)
    # An owned pod at another initdata looks like the old revision still rolling out.
    assert conditions(status)["Ready"] == ("False", "RolloutInProgress", 3)
    assert [e[:4] for e in events.posted if e[0] == "Pod"] == [
        ("Pod", pod["metadata"]["name"], "Warning", "AttestationFailed")]


async def test_deleted_route_is_left_alone(controller: RouteController, kube: FakeKube) -> None:
    kube.custom[(ROUTE_PLURAL, NS, ROUTE)]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert await controller.step(NS, ROUTE) == CONFIG.reattest_interval
    assert kube.calls == []


async def test_admission_names_the_missing_bundle(controller: RouteController, kube: FakeKube) -> None:
    assert await controller.admission(SPEC, NS) == (
        "policyBundleRef: PolicyBundle 'b' not found in namespace 'team'")
    await publish_bundle(kube)
    assert await controller.admission(SPEC, NS) is None


@pytest.mark.parametrize("image", ["ghcr.io/cmcp-k8s/cmcp-enclave:0.1.0", "cmcp-enclave",
                                   "reg/e@sha256:" + "0" * 63, "reg/e@sha256:" + "0" * 64 + "\n",
                                   'reg/e@sha256:' + "0" * 64 + '"\nExecProcessRequest := true\n#'])
async def test_admission_refuses_an_image_that_is_not_a_digest(controller: RouteController, kube: FakeKube,
                                                               image: str) -> None:
    await publish_bundle(kube)
    problem = await controller.admission({**SPEC, "image": image}, NS)
    assert problem is not None and "pinned by digest" in problem
    assert await controller.admission({**SPEC, "image": "reg/e@sha256:" + "0" * 64}, NS) is None


async def test_a_route_whose_image_is_a_tag_deploys_nothing(controller: RouteController,
                                                             kube: FakeKube) -> None:
    """Past the webhook (e.g. created while it was down), a tag still never reaches a pod."""
    await publish_bundle(kube)
    route = kube.custom[(ROUTE_PLURAL, NS, ROUTE)]
    route["spec"] = {**SPEC, "image": "ghcr.io/cmcp-k8s/cmcp-enclave:0.1.0"}
    kube.calls.clear()
    await controller.step(NS, ROUTE)
    assert kube.writes("apply") == []
    assert "sha256" in str(route_status(kube)["conditions"])


async def test_weakened_admission_would_admit_the_hostile_image(controller: RouteController, kube: FakeKube,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Weakened component: with the digest check gone the same hostile string is admitted."""
    await publish_bundle(kube)
    monkeypatch.setattr(route_controller, "IMAGE_DIGEST_RE", re.compile(".*", re.S))
    hostile = 'reg/e@sha256:' + "0" * 64 + '"\nExecProcessRequest := true\n#'
    assert await controller.admission({**SPEC, "image": hostile}, NS) is None


# --- spec.gpu: the GPU evidence beside the CPU evidence ---------------------------------------

GPU_SPEC = {**SPEC, "gpu": {"vendor": "nvidia", "count": 1, "revocation": "not-checked"}}
GPU_CONFIG = dataclasses.replace(CONFIG, gpu_provider="simulated")


class GpuEnclaves(SimulatedEnclaves):
    """An honest simulated enclave with a simulated GPU; ``attack`` makes its GPU evidence
    missing (``none``), answer another attestation's nonce (``replay``) or flips a report byte."""

    def __init__(self, kube: FakeKube) -> None:
        super().__init__(kube)
        self.gpu = SimulatedGpuProvider()
        self.attack = ""

    async def __call__(self, address: str, *, deadline: float) -> tuple[bytes, Evidence]:
        nonce, ev = await super().__call__(address, deadline=deadline)
        envelopes: tuple[bytes, ...] = self.gpu.evidence(gpu_nonce(ev.report_data))
        if self.attack == "none":
            envelopes = ()
        elif self.attack == "replay":
            envelopes = self.gpu.evidence(gpu_nonce(os.urandom(64)))
        elif self.attack == "tampered":
            doc = json.loads(envelopes[0])
            report = bytearray(base64.b64decode(doc["report"]))
            report[60] ^= 1
            doc["report"] = base64.b64encode(bytes(report)).decode()
            envelopes = (json.dumps(doc).encode(),)
        return nonce, dataclasses.replace(ev, gpu_evidence=envelopes)


@pytest.fixture
def gpu_route(kube: FakeKube, events: FakeEvents) -> tuple[RouteController, GpuEnclaves]:
    kube.custom[(ROUTE_PLURAL, NS, ROUTE)]["spec"] = GPU_SPEC
    enclaves = GpuEnclaves(kube)
    return RouteController(kube, GPU_CONFIG, core_verifier(), events, fetch=enclaves), enclaves  # type: ignore[arg-type]


async def test_a_gpu_route_attests_cpu_and_gpu_and_reports_the_gpu(
        gpu_route: tuple[RouteController, GpuEnclaves], kube: FakeKube) -> None:
    controller, _ = gpu_route
    await publish_bundle(kube)
    await controller.step(NS, ROUTE)
    template = kube.applied[("Deployment", NS, DEPLOY)]["spec"]["template"]
    assert template["spec"]["containers"][0]["args"][-2:] == ["--gpu", "simulated"]
    pod = start_pod(kube)
    await controller.step(NS, ROUTE)
    name = pod["metadata"]["name"]
    assert kube.writes("set_attested_condition")[-1] == ("set_attested_condition", NS, name, True, "Attested")
    entry = route_status(kube)["pods"][0]
    assert entry["gpu"] == {"attested": True, "code": "OK", "count": 1, "revocation": "not-checked",
                            "driverVersion": "550.90.07", "vbiosVersion": "96.00.9f.00.01"}
    assert route_status(kube)["attestedReplicas"] == 1


@pytest.mark.parametrize("attack, code", [
    ("none", "GPU_EVIDENCE_MISSING"), ("replay", "GPU_NONCE_MISMATCH"),
    ("tampered", "GPU_EVIDENCE_BAD_SIGNATURE"),
])
async def test_a_gpu_route_never_routes_to_a_pod_without_good_gpu_evidence(
        gpu_route: tuple[RouteController, GpuEnclaves], kube: FakeKube, attack: str, code: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    controller, enclaves = gpu_route
    enclaves.attack = attack
    await publish_bundle(kube)
    await controller.step(NS, ROUTE)
    pod = start_pod(kube)
    assert await controller.step(NS, ROUTE) == FAST_POLL
    reason = camel(code)
    name = pod["metadata"]["name"]
    assert kube.writes("set_attested_condition")[-1] == ("set_attested_condition", NS, name, False, reason)
    entry = route_status(kube)["pods"][0]
    assert entry["attested"] is False and entry["reason"] == reason
    assert entry["gpu"]["attested"] is False and entry["gpu"]["code"] == code
    assert "keyThumbprint" not in entry and route_status(kube)["attestedReplicas"] == 0
    # Weakened: an operator that forgets the route's GPU requirement attests and routes the pod.
    monkeypatch.setattr(route_controller.GpuRequirement, "from_spec", staticmethod(lambda _spec: None))
    controller.pods.clear()
    await controller.step(NS, ROUTE)
    assert route_status(kube)["pods"][0]["attested"] is True


async def test_admission_refuses_a_gpu_requirement_it_does_not_know(controller: RouteController,
                                                                   kube: FakeKube) -> None:
    await publish_bundle(kube)
    problem = await controller.admission({**SPEC, "gpu": {"vendor": "amd"}}, NS)
    assert problem is not None and problem.startswith("gpu: gpu.vendor")
    assert await controller.admission(GPU_SPEC, NS) is None


async def test_a_malformed_gpu_requirement_fails_every_pod_closed(
        gpu_route: tuple[RouteController, GpuEnclaves], kube: FakeKube) -> None:
    controller, _ = gpu_route
    await publish_bundle(kube)
    await controller.step(NS, ROUTE)
    start_pod(kube)
    kube.custom[(ROUTE_PLURAL, NS, ROUTE)]["spec"] = {**SPEC, "gpu": {"count": 0}}
    await controller.step(NS, ROUTE)
    entry = route_status(kube)["pods"][0]
    assert entry["attested"] is False and entry["reason"] == "GpuRequirementInvalid"
