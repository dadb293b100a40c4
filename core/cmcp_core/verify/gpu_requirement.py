"""A route's GPU requirement, and the appraisal of an Attest's GPU envelopes against it.

Every relying party (operator, gateway, ``cmcpctl``) reaches this through
:func:`cmcp_core.verify.appraise.appraise_attestation`, which calls :func:`appraise_gpus` only
after the CPU evidence and its REPORT_DATA binding verified, with that *verified* REPORT_DATA: the
GPU nonce is derived from it here, never taken from the enclave. The GPU evidence is bound to
the CPU evidence through that nonce only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cmcp_core.binding import gpu_nonce
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import decode_gpu_evidence
from cmcp_core.verify.gpu import REVOCATION_POLICIES, GpuPolicy, appraise_gpu
from cmcp_core.verify.verdict import OK, GpuVerdict

VENDORS = ("nvidia",)
MAX_GPUS = 8


@dataclass(frozen=True)
class GpuRequirement:
    """``McpRoute.spec.gpu``: how many GPUs of which vendor, and the revocation policy applied."""

    vendor: str = "nvidia"
    count: int = 1
    revocation: str = "not-checked"

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"gpu.vendor must be one of {VENDORS}")
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_GPUS:
            raise ValueError(f"gpu.count must be 1..{MAX_GPUS}")
        if self.revocation not in REVOCATION_POLICIES:
            raise ValueError(f"gpu.revocation must be one of {REVOCATION_POLICIES}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> GpuRequirement | None:
        """``None`` when the route requires no GPU; ``ValueError`` on anything else malformed."""
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise ValueError("gpu must be an object")
        unknown = set(spec) - {"vendor", "count", "revocation"}
        if unknown:
            raise ValueError(f"gpu has unknown fields {sorted(unknown)}")
        return cls(vendor=spec.get("vendor", "nvidia"), count=spec.get("count", 1),
                   revocation=spec.get("revocation", "not-checked"))

    def to_spec(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "count": self.count, "revocation": self.revocation}


@dataclass(frozen=True)
class GpuAppraisal:
    passed: bool
    code: str
    message: str
    verdicts: tuple[GpuVerdict, ...] = ()


def _stapled_rims(envelope: bytes) -> tuple[bytes, ...]:
    try:
        return decode_gpu_evidence(bytes(envelope)).rims
    except CmcpError:
        return ()  # appraise_gpu reports the malformed envelope with its own code


def appraise_gpus(
    envelopes: Sequence[bytes],
    requirement: GpuRequirement,
    *,
    report_data: bytes,
    allow_simulated: bool,
    now: int | float | datetime | None = None,
) -> GpuAppraisal:
    """All of ``envelopes`` must verify for ``gpu_nonce(report_data)``, at least ``count`` of them."""
    if len(envelopes) < requirement.count:
        return GpuAppraisal(False, Code.GPU_EVIDENCE_MISSING.value,
                            f"{requirement.count} GPU(s) required; the enclave sent evidence for "
                            f"{len(envelopes)}")
    if len(envelopes) > MAX_GPUS:
        return GpuAppraisal(False, Code.GPU_EVIDENCE_MALFORMED.value, f"more than {MAX_GPUS} GPU envelopes")
    nonce = gpu_nonce(report_data)
    policy = GpuPolicy(revocation=requirement.revocation, allow_simulated=allow_simulated)
    verdicts = tuple(
        appraise_gpu(e, nonce=nonce, rims=_stapled_rims(e), policy=policy, now=now) for e in envelopes
    )
    for index, verdict in enumerate(verdicts):
        if not verdict.passed:
            return GpuAppraisal(False, verdict.code, f"GPU {index}: {verdict.message}", verdicts)
    return GpuAppraisal(True, OK, f"{len(verdicts)} GPU(s) verified", verdicts)
