"""GPU evidence in the enclave: every report carries one envelope per GPU for gpu_nonce(REPORT_DATA),
the simulated GPU appraises under the real verifier, and NVML with no GPU fails closed."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_core.binding import gpu_nonce
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import decode_gpu_evidence
from cmcp_core.evidence.gpu_simulated import SimulatedGpu
from cmcp_core.verify.gpu import GpuPolicy, appraise_gpu
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.gpu import (
    NvmlGpuProvider,
    SimulatedGpuProvider,
    WithGpus,
    gpus_of,
    make_gpu_provider,
    read_rims,
    with_gpus,
)
from cmcp_enclave.server import attest_response
from cmcp_enclave.tee import SimulatedProvider
from tests.paths import DATA, EXAMPLES

ALLOW = GpuPolicy(allow_simulated=True)


def _appraise(envelope: bytes, report_data: bytes, policy: GpuPolicy = ALLOW) -> Any:
    return appraise_gpu(envelope, nonce=gpu_nonce(report_data), rims=decode_gpu_evidence(envelope).rims,
                        policy=policy)


def test_every_report_carries_simulated_gpu_evidence_for_its_report_data() -> None:
    provider = WithGpus(SimulatedProvider("00" * 48), SimulatedGpuProvider())
    report_data = os.urandom(64)
    report = provider.report(report_data)
    assert report.platform == "simulated" and len(report.gpu_evidence) == 1
    verdict = _appraise(report.gpu_evidence[0], report_data)
    assert verdict.passed, verdict.message
    assert verdict.assurance == "software-only" and verdict.revocation == "not-checked"
    refused = _appraise(report.gpu_evidence[0], report_data, GpuPolicy())
    assert refused.code == Code.SIMULATED_NOT_ALLOWED.value
    # the evidence answers this REPORT_DATA only: another attestation's nonce is refused
    assert _appraise(report.gpu_evidence[0], os.urandom(64)).code == Code.GPU_NONCE_MISMATCH.value


def test_attest_response_carries_the_gpu_evidence(tmp_path: Path) -> None:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    enclave.provider = with_gpus(enclave.provider, SimulatedGpuProvider())
    response = attest_response(enclave, os.urandom(32))
    assert len(response.gpu_evidence) == 1
    assert _appraise(bytes(response.gpu_evidence[0]), bytes(response.report_data)).passed


def test_no_gpu_means_the_cpu_provider_unchanged() -> None:
    cpu = SimulatedProvider("00" * 48)
    assert make_gpu_provider("none") is None
    assert with_gpus(cpu, None) is cpu
    assert cpu.report(bytes(64)).gpu_evidence == ()


def test_the_enclave_finds_the_gpus_it_asks_again_at_each_close() -> None:
    cpu, gpus = SimulatedProvider("00" * 48), SimulatedGpuProvider()
    assert gpus_of(with_gpus(cpu, gpus)) is gpus
    assert gpus_of(cpu) is None


def test_a_gpu_provider_that_answers_nothing_fails_closed() -> None:
    class Silent:
        name = "silent"

        def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
            return ()

    with pytest.raises(CmcpError) as err:
        WithGpus(SimulatedProvider("00" * 48), Silent()).report(bytes(64))
    assert err.value.code == Code.GPU_EVIDENCE_MISSING


def test_nvidia_without_a_gpu_fails_closed() -> None:
    """This machine has no GPU: NVML (or its binding) is missing, the provider refuses to start."""
    with pytest.raises(CmcpError) as err:
        make_gpu_provider("nvidia")
    assert err.value.code == Code.TEE_PROVIDER_FAILED


class FakeNvml:
    """Stand-in for libnvidia-ml below NVIDIA's binding: answers as a Hopper would, from a SimulatedGpu."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpu: SimulatedGpu, count: int = 1, broken: bool = False):
        self.gpu, self.count, self.broken = gpu, count, broken

    def nvmlInit(self) -> None:
        if self.broken:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        raw = self.gpu.report(bytes(nonce))
        return SimpleNamespace(attestationReport=list(raw + bytes(64)), attestationReportSize=len(raw))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        pem = b"".join(c.public_bytes(Encoding.PEM) for c in (self.gpu.leaf, self.gpu.root))
        return SimpleNamespace(attestationCertChain=list(pem + bytes(16)), attestationCertChainSize=len(pem))


def test_nvml_path_builds_one_envelope_per_gpu() -> None:
    gpu = SimulatedGpu()
    provider = NvmlGpuProvider((gpu.rim("driver"), gpu.rim("vbios")), nvml=FakeNvml(gpu, count=2))
    report_data = os.urandom(64)
    envelopes = provider.evidence(gpu_nonce(report_data))
    assert len(envelopes) == 2
    for envelope in envelopes:
        # NVML's evidence is not marked simulated: only the simulator's root shows what it is
        assert _appraise(envelope, report_data).code == Code.GPU_CHAIN_INVALID.value


def test_nvml_errors_fail_closed() -> None:
    with pytest.raises(CmcpError) as err:
        NvmlGpuProvider(nvml=FakeNvml(SimulatedGpu(), broken=True))
    assert err.value.code == Code.TEE_PROVIDER_FAILED
    with pytest.raises(CmcpError) as err:
        NvmlGpuProvider(nvml=FakeNvml(SimulatedGpu(), count=0))
    assert err.value.code == Code.TEE_PROVIDER_FAILED


def test_rims_are_read_from_a_directory(tmp_path: Path) -> None:
    assert read_rims(None) == ()
    assert len(read_rims(str(DATA / "nvidia"))) == 2
    with pytest.raises(CmcpError) as err:
        read_rims(str(tmp_path / "absent"))
    assert err.value.code == Code.TEE_PROVIDER_FAILED
