"""A route's GPU requirement, appraised in the one appraisal every relying party calls: a real
in-process enclave on the simulated TEE with a simulated GPU; attackers that omit, replay or
tamper with GPU evidence; and a weakened appraisal that ignores the requirement."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.errors import Code
from cmcp_core.proto import enclave_pb2
from cmcp_core.verify import AppraisalPolicy, Verdict
from cmcp_core.verify.appraise import appraise_response
from cmcp_core.verify.gpu_requirement import GpuRequirement, appraise_gpus
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_devkit.release import dev_appraisal
from cmcp_enclave.gpu import SimulatedGpuProvider, with_gpus
from cmcp_enclave.server import attest_response
from tests.paths import EXAMPLES

REQUIRE = GpuRequirement()


@dataclass
class Attested:
    enclave: Any
    nonce: bytes
    response: Any


@pytest.fixture
def gpu_enclave(tmp_path: Path) -> Any:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    enclave.provider = with_gpus(enclave.provider, SimulatedGpuProvider())
    return enclave


def _attest(enclave: Any) -> Attested:
    nonce = os.urandom(32)
    return Attested(enclave, nonce, attest_response(enclave, nonce))


def _with_gpu_evidence(response: Any, envelopes: list[bytes]) -> Any:
    out = enclave_pb2.AttestResponse()
    out.CopyFrom(response)
    del out.gpu_evidence[:]
    out.gpu_evidence.extend(envelopes)
    return out


def _appraise(response: Any, nonce: bytes, gpu: GpuRequirement | None = REQUIRE,
              policy: AppraisalPolicy | None = None) -> Verdict:
    return appraise_response(response, nonce, policy or dev_appraisal(), gpu=gpu)


def test_cpu_and_simulated_gpu_evidence_pass_together(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    verdict = _appraise(a.response, a.nonce)
    assert verdict.passed, verdict.message
    assert verdict.checks[-1] == "gpu:1"
    assert verdict.assurance == "software-only"
    assert [g.revocation for g in verdict.gpus] == ["not-checked"]
    assert verdict.to_json()["gpus"][0]["driver_version"] == "550.90.07"


def test_missing_gpu_evidence_fails_the_attestation(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    verdict = _appraise(_with_gpu_evidence(a.response, []), a.nonce)
    assert not verdict.passed and verdict.code == Code.GPU_EVIDENCE_MISSING.value
    two = _appraise(a.response, a.nonce, GpuRequirement(count=2))
    assert two.code == Code.GPU_EVIDENCE_MISSING.value


def test_gpu_evidence_replayed_from_another_attestation_is_refused(gpu_enclave: Any) -> None:
    """The attacker keeps a GPU's good evidence and sends it with a fresh CPU attestation."""
    old = _attest(gpu_enclave)
    new = _attest(gpu_enclave)
    replayed = _with_gpu_evidence(new.response, list(old.response.gpu_evidence))
    verdict = _appraise(replayed, new.nonce)
    assert not verdict.passed and verdict.code == Code.GPU_NONCE_MISMATCH.value
    assert verdict.public_key_jwk is None


def test_tampered_gpu_report_is_refused(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    doc = json.loads(a.response.gpu_evidence[0])
    report = bytearray(base64.b64decode(doc["report"]))
    report[60] ^= 1
    doc["report"] = base64.b64encode(bytes(report)).decode()
    verdict = _appraise(_with_gpu_evidence(a.response, [json.dumps(doc).encode()]), a.nonce)
    assert verdict.code == Code.GPU_EVIDENCE_BAD_SIGNATURE.value


def test_one_bad_gpu_among_good_ones_fails_all(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    envelopes = [*a.response.gpu_evidence, b"not an envelope"]
    verdict = _appraise(_with_gpu_evidence(a.response, envelopes), a.nonce)
    assert verdict.code == Code.GPU_EVIDENCE_MALFORMED.value


def test_simulated_gpu_needs_simulated_evidence_allowed(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    gpus = appraise_gpus(list(a.response.gpu_evidence), REQUIRE, report_data=a.response.report_data,
                         allow_simulated=False)
    assert not gpus.passed and gpus.code == Code.SIMULATED_NOT_ALLOWED.value


def test_stapled_ocsp_required_but_absent_is_refused(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    verdict = _appraise(a.response, a.nonce, GpuRequirement(revocation="ocsp-stapled"))
    assert verdict.code == Code.GPU_OCSP_INVALID.value


def test_a_route_without_a_gpu_requirement_does_not_look_at_gpus(gpu_enclave: Any) -> None:
    a = _attest(gpu_enclave)
    verdict = _appraise(_with_gpu_evidence(a.response, []), a.nonce, gpu=None)
    assert verdict.passed and verdict.gpus == ()


def weakened_appraise(response: Any, nonce: bytes, gpu: GpuRequirement | None) -> Verdict:
    """A relying party that forgets the route's GPU requirement."""
    return appraise_response(response, nonce, dev_appraisal())


def test_weakened_appraisal_lets_missing_and_replayed_gpu_evidence_through(gpu_enclave: Any) -> None:
    old, new = _attest(gpu_enclave), _attest(gpu_enclave)
    for attack in (_with_gpu_evidence(new.response, []),
                   _with_gpu_evidence(new.response, list(old.response.gpu_evidence))):
        assert weakened_appraise(attack, new.nonce, REQUIRE).passed
        assert not _appraise(attack, new.nonce).passed


@pytest.mark.parametrize("spec, error", [
    ({"vendor": "amd"}, "vendor"), ({"count": 0}, "count"), ({"count": 9}, "count"),
    ({"revocation": "online"}, "revocation"), ({"extra": 1}, "unknown"), ([], "object"),
])
def test_requirement_from_spec_refuses_what_it_does_not_know(spec: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        GpuRequirement.from_spec(spec)


def test_requirement_from_spec_defaults() -> None:
    assert GpuRequirement.from_spec(None) is None
    assert GpuRequirement.from_spec({}) == GpuRequirement("nvidia", 1, "not-checked")
    assert GpuRequirement.from_spec(REQUIRE.to_spec()) == REQUIRE
