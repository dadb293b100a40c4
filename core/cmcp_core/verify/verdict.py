"""The verifier's result model and appraisal policy.

A :class:`Verdict` keeps two answers apart on purpose: ``passed``/``code`` is the strict
outcome (the first failing check, with a stable code from :mod:`cmcp_core.errors`), and
``assurance`` says what kind of root vouched for the evidence (``hardware``,
``software-only`` or ``none`` when nothing was authenticated). "Software-only but
consistent" and "signature failed" can therefore never be confused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cmcp_core.errors import CmcpError, Code
from cmcp_core.verify.reference import ReleaseReference

Assurance = Literal["hardware", "software-only", "none"]
Revocation = Literal["ocsp-good", "not-checked"]  # how a GPU's certificates' revocation was judged
OK = "OK"
DEFAULT_TCB_STATUSES: frozenset[str] = frozenset({"UpToDate"})


class VerifyFailure(CmcpError):
    """Raised inside the verifier for a failed check; the public entry points turn it into a Verdict."""


@dataclass(frozen=True)
class GpuVerdict:
    """One GPU's appraisal (:func:`cmcp_core.verify.gpu.appraise_gpu`); kept here, beside
    :class:`Verdict` that carries them, so the two modules do not import each other."""

    passed: bool
    code: str
    message: str
    assurance: Assurance
    arch: str | None = None
    revocation: Revocation | None = None  # set once every certificate and RIM verified
    driver_version: str | None = None
    vbios_version: str | None = None
    claims: dict[str, str] = field(default_factory=dict)
    checks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "code": self.code,
            "message": self.message,
            "assurance": self.assurance,
            "arch": self.arch,
            "revocation": self.revocation,
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "claims": dict(self.claims),
            "checks": list(self.checks),
        }


@dataclass(frozen=True)
class AppraisalPolicy:
    """What an appraiser accepts beyond "the signatures verify".

    ``accepted_tcb_statuses`` applies to TDX (dcap-qvl's status strings); the chart may widen
    it, e.g. with ``SWHardeningNeeded``. ``releases`` are the verified release manifests' reference
    values: a guest must match one, and with none configured every guest is refused. TDX
    collateral, when the caller passes none, comes from ``collateral_dir`` and then ``pccs_url``.
    """

    accepted_tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES
    rejected_advisories: frozenset[str] = frozenset()
    allow_simulated: bool = False
    allow_debug: bool = False
    accepted_platforms: frozenset[str] = frozenset({"tdx", "snp", "simulated", "simulated-snp"})
    releases: tuple[ReleaseReference, ...] = ()
    collateral_dir: str | None = None
    pccs_url: str | None = None
    simulator_keys: frozenset[bytes] | None = None  # pin simulator attestation keys (x||y) if set


@dataclass(frozen=True)
class Verdict:
    passed: bool
    code: str
    message: str
    assurance: Assurance
    platform: str
    public_key_jwk: dict[str, str] | None = None
    key_thumbprint: str | None = None
    bundle_hash: str | None = None
    catalog_hash: str | None = None
    mode: str | None = None
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    measurements: dict[str, str] = field(default_factory=dict)
    checks: tuple[str, ...] = ()  # checks that passed, in order
    gpus: tuple[GpuVerdict, ...] = ()  # one per GPU envelope, when the caller required GPUs

    @property
    def ok(self) -> bool:
        return self.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "code": self.code,
            "message": self.message,
            "assurance": self.assurance,
            "platform": self.platform,
            "public_key_jwk": self.public_key_jwk,
            "key_thumbprint": self.key_thumbprint,
            "bundle_hash": self.bundle_hash,
            "catalog_hash": self.catalog_hash,
            "enforcement_mode": self.mode,
            "tcb_status": self.tcb_status,
            "advisories": list(self.advisories),
            "measurements": dict(self.measurements),
            "checks": list(self.checks),
            **({"gpus": [g.to_json() for g in self.gpus]} if self.gpus else {}),
        }


def fail(code: Code, message: str) -> VerifyFailure:
    return VerifyFailure(code, message)
