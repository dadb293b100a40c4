"""The simulated GPU writes NVIDIA's formats (decoded by the same parsers) and marks itself everywhere."""

from __future__ import annotations

from cmcp_core.evidence.gpu import decode_gpu_evidence, parse_gpu_report
from cmcp_core.evidence.gpu_simulated import (
    SIMULATED_DRIVER_VERSION,
    SIMULATOR_ORG,
    SimulatedGpu,
    simulated_measurements,
)
from cmcp_core.verify.rim import signing_chain
from tests.helpers.gpu_samples import PINNED

NONCE = bytes(range(32))


def test_its_report_decodes_with_the_real_parser_and_answers_the_nonce() -> None:
    gpu = SimulatedGpu()
    report = parse_gpu_report(gpu.report(NONCE))
    assert report.request.nonce == NONCE
    assert report.measurements == simulated_measurements()
    assert report.driver_version == SIMULATED_DRIVER_VERSION and report.vbios_version == "96.00.9f.00.01"


def test_its_envelope_says_simulated_and_every_certificate_names_the_simulator() -> None:
    gpu = SimulatedGpu()
    evidence = decode_gpu_evidence(gpu.evidence(NONCE))
    assert evidence.simulated
    for cert in (gpu.leaf, gpu.root, gpu.rim_signer, gpu.rim_root, *signing_chain(gpu.rim("driver"))):
        assert SIMULATOR_ORG in cert.subject.rfc4514_string()
        assert SIMULATOR_ORG in cert.issuer.rfc4514_string()
        assert cert.not_valid_before_utc <= PINNED <= cert.not_valid_after_utc


def test_each_simulator_has_its_own_roots() -> None:
    assert SimulatedGpu().root != SimulatedGpu().root
