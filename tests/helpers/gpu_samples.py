"""NVIDIA's real Hopper samples (tests/data/nvidia) as the verifier takes them: envelopes, RIMs, nonces."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_core.evidence.gpu import GpuEvidence, report_from_hex
from tests.paths import DATA

NVIDIA = DATA / "nvidia"
# Inside every sample certificate's validity (the RIM signers expired in June 2025).
PINNED = datetime(2024, 6, 1, tzinfo=UTC)
# The nonce of the 2.0.0 report (that verifier's BaseSettings.NONCE) and of the 2.7.3 report.
NONCE_2_0 = bytes.fromhex("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e")
NONCE_2_7 = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
DRIVER_RIM = "Driver_RIM_test_no_gpu.swidtag"
VBIOS_RIM = "1010_0200_882_96005E0001_test_no_gpu.swidtag"


def report(name: str = "attestationReport.txt") -> bytes:
    return report_from_hex((NVIDIA / name).read_text())


def chain_der(name: str = "gpuAkCertChain.txt") -> tuple[bytes, ...]:
    certs = x509.load_pem_x509_certificates((NVIDIA / name).read_bytes())
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def envelope(raw_report: bytes | None = None, certs: tuple[bytes, ...] | None = None) -> bytes:
    """The 2.0.0 sample (or the given parts) as the enclave would send it."""
    return GpuEvidence(report=report() if raw_report is None else raw_report,
                       certs=chain_der() if certs is None else certs).encode()


def newer_envelope() -> bytes:
    """The 2.7.3 sample: another driver and VBIOS, an FWID, its own nonce."""
    return GpuEvidence(report=report("hopperAttestationReport.txt"),
                       certs=chain_der("hopperCertChain.txt")).encode()


def rims() -> list[bytes]:
    return [(NVIDIA / DRIVER_RIM).read_bytes(), (NVIDIA / VBIOS_RIM).read_bytes()]
