"""GPU evidence providers: one ``cmcp-gpu-evidence-v1`` envelope per confidential GPU for a nonce.

The TEE provider answers for the CPU; a :class:`GpuProvider` answers for the GPUs beside it, with
the SPDM nonce :func:`cmcp_core.binding.gpu_nonce` derives from the very REPORT_DATA the CPU report
carries. :class:`WithGpus` wraps a TEE provider so that every report (the start-up check's and
every Attest's) carries both, or fails closed: an enclave configured with a GPU never answers with
CPU evidence alone. The GPU evidence is bound to the CPU evidence through that nonce only.
At session close the enclave asks the same provider (:func:`gpus_of`) for evidence answering
``gpu_nonce`` of the Trust Record's own REPORT_DATA, which the record names by digest (ADR 0031).

* ``simulated``: :class:`cmcp_core.evidence.gpu_simulated.SimulatedGpu` (its own in-memory roots,
  evidence marked simulated, refused by verifiers that do not allow simulated evidence): the
  stand-in for the device, as ``--tee simulated`` is for the CPU.
* ``nvidia``: NVIDIA's NVML binding (``nvidia-ml-py``, the ``gpu`` extra):
  ``nvmlDeviceGetConfComputeGpuAttestationReport`` with our nonce and
  ``nvmlDeviceGetConfComputeGpuCertificate`` for the attestation chain (PEM, leaf first). RIMs
  are public signed documents; the enclave staples those it is given (``--gpu-rim-dir``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_core.binding import gpu_nonce
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import NONCE_LEN, GpuEvidence
from cmcp_core.evidence.gpu_simulated import SimulatedGpu
from cmcp_enclave.tee import Report, TeeProvider

GPUS = ("none", "nvidia", "simulated")
MAX_RIM_BYTES = 256 * 1024


def _fail(detail: str) -> CmcpError:
    return CmcpError(Code.TEE_PROVIDER_FAILED, detail)


class GpuProvider(Protocol):
    name: str

    def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
        """One envelope per GPU, each answering ``nonce``; raises ``CmcpError`` when any GPU cannot."""
        ...


class SimulatedGpuProvider:
    """One software GPU; its RIMs are signed once at start and stapled to every envelope."""

    name = "simulated"

    def __init__(self, gpu: SimulatedGpu | None = None):
        self.gpu = gpu or SimulatedGpu()
        self._rims = (self.gpu.rim("driver"), self.gpu.rim("vbios"))

    def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
        return (self.gpu.evidence(nonce, rims=self._rims),)


def _pem_chain(data: bytes) -> tuple[bytes, ...]:
    """NVML's attestation chain is PEM certificates, leaf first; the envelope wants DER."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _fail(f"NVML attestation certificate chain does not parse: {exc}") from exc
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def read_rims(directory: str | None) -> tuple[bytes, ...]:
    """The signed RIMs (``*.swidtag``/``*.xml``) to staple; verifiers check their signatures."""
    if not directory:
        return ()
    try:
        paths = sorted(p for p in Path(directory).iterdir() if p.suffix in (".swidtag", ".xml"))
        rims = tuple(p.read_bytes() for p in paths)
    except OSError as exc:
        raise _fail(f"GPU RIM directory {directory}: {exc}") from exc
    if any(len(r) > MAX_RIM_BYTES for r in rims):
        raise _fail(f"a GPU RIM in {directory} exceeds {MAX_RIM_BYTES} bytes")
    return rims


class NvmlGpuProvider:
    """Every GPU NVML lists, in index order; any NVML error fails the whole answer."""

    name = "nvidia"

    def __init__(self, rims: Sequence[bytes] = (), nvml: Any = None):
        """``nvml`` is the ``pynvml`` module (imported here when not given)."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise _fail("--gpu nvidia needs NVIDIA's NVML binding: install cmcp-enclave[gpu]") from exc
        self._nvml = nvml
        self._rims = tuple(rims)
        try:
            nvml.nvmlInit()
            self._count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            raise _fail(f"NVML: {exc}") from exc
        if self._count < 1:
            raise _fail("NVML lists no GPU")

    def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
        if len(nonce) != NONCE_LEN:
            raise _fail(f"GPU nonce must be {NONCE_LEN} bytes")
        nvml = self._nvml
        out = []
        try:
            for index in range(self._count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                raw = bytes(report.attestationReport)[: report.attestationReportSize]
                chain = bytes(cert.attestationCertChain)[: cert.attestationCertChainSize]
                out.append(GpuEvidence(report=raw, certs=_pem_chain(chain), rims=self._rims).encode())
        except nvml.NVMLError as exc:
            raise _fail(f"NVML GPU attestation: {exc}") from exc
        return tuple(out)


def make_gpu_provider(gpu: str, *, rim_dir: str | None = None) -> GpuProvider | None:
    """The provider for ``--gpu``; ``None`` for ``none``; ``CmcpError(TEE_PROVIDER_FAILED)`` when unusable."""
    if gpu == "none":
        return None
    if gpu == "simulated":
        return SimulatedGpuProvider()
    if gpu == "nvidia":
        return NvmlGpuProvider(read_rims(rim_dir))
    raise _fail(f"unknown GPU provider {gpu!r}")


class WithGpus:
    """A TEE provider whose every report also carries the GPUs' evidence for its REPORT_DATA."""

    def __init__(self, cpu: TeeProvider, gpus: GpuProvider):
        self.name = cpu.name
        self._cpu = cpu
        self._gpus = gpus

    @property
    def gpus(self) -> GpuProvider:
        return self._gpus

    def report(self, report_data: bytes) -> Report:
        report = self._cpu.report(report_data)
        return dataclasses.replace(report, gpu_evidence=gpu_evidence(self._gpus, report.report_data))


def gpu_evidence(gpus: GpuProvider, report_data: bytes) -> tuple[bytes, ...]:
    """Every GPU's envelope for ``gpu_nonce(report_data)``; ``CmcpError`` when any GPU cannot
    answer (``TEE_PROVIDER_FAILED``) or none does (``GPU_EVIDENCE_MISSING``): never fewer silently."""
    evidence = gpus.evidence(gpu_nonce(report_data))
    if not evidence:
        raise CmcpError(Code.GPU_EVIDENCE_MISSING, "the GPU provider returned no evidence")
    return evidence


def with_gpus(cpu: TeeProvider, gpus: GpuProvider | None) -> TeeProvider:
    return cpu if gpus is None else WithGpus(cpu, gpus)


def gpus_of(provider: TeeProvider) -> GpuProvider | None:
    """The GPU provider a TEE provider was wrapped with (:func:`with_gpus`), if any."""
    return provider.gpus if isinstance(provider, WithGpus) else None
