"""Decide whether one enclave pod may receive traffic.

The verifier library (:mod:`cmcp_core.verify`) appraises the evidence: signature chain,
TCB, the measured initdata digest and the REPORT_DATA binding of key, hashes and our nonce.
On top of that the operator checks what only it knows: the initdata the enclave reports is
byte for byte the initdata the operator rendered into *that pod's* annotation, and that
initdata is one of the route's accepted revisions (the current bundle, or the previous one
while a rollout is in progress). Anything else — including a missing verifier — is a refusal.

A route with ``spec.gpu`` has its pods' GPU evidence appraised in the same verdict (the verifier
library derives the GPU nonce from the verified REPORT_DATA); the per-pod GPU result goes to
``status.pods[].gpu``, and a pod whose GPU evidence is missing or fails is not attested.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cmcp_core.attestation import Appraisal, Evidence
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_PLATFORM
from cmcp_core.initdata import InitdataError, parse
from cmcp_core.verify import AppraisalPolicy, Verdict
from cmcp_core.verify.gpu_requirement import GpuRequirement


@dataclass(frozen=True)
class AppraisalSettings:
    """What one route's pods are appraised with: the operator's policy (its verified releases,
    TCB statuses, simulated or not) narrowed to the platforms the route's ``spec.tee`` allows."""

    allowed_tee: tuple[str, ...]
    policy: AppraisalPolicy
    gpu: GpuRequirement | None = None  # the route's spec.gpu
    gpu_problem: str | None = None  # spec.gpu did not parse: every pod is refused


class VerifierFn(Protocol):
    """The evidence check (:func:`cmcp_operator.verifier.core_verifier`, or a test's)."""

    def __call__(self, ev: Evidence, *, nonce: bytes, settings: AppraisalSettings,
                 expected_bundle_hash: str, expected_initdata: bytes) -> Verdict: ...


def camel(code: str) -> str:
    """POLICY_DENY -> PolicyDeny: condition reasons are CamelCase by API convention."""
    return "".join(part.capitalize() for part in code.lower().split("_") if part)


def allowed_tee(tee: str, *, allow_simulated: bool) -> tuple[str, ...]:
    """Evidence platforms acceptable for a route's ``spec.tee``.

    ``allow_simulated`` is the one switch for software-only evidence: with it, any route also
    accepts ``simulated`` evidence (the simulator's TDX quote, which a TDX node's stand-in, the dev
    kit's, serves at the real TSM path to the enclave's real ``tdx`` provider, ADR 0019), and a
    route that accepts SNP also accepts ``simulated-snp`` (the simulator's SNP report, which an SNP
    node's stand-in serves); without it, never."""
    platforms = {"tdx": ("tdx",), "snp": ("snp",), "any": ("tdx", "snp", "coco-aa"),
                 "simulated": ("simulated",)}[tee]
    if tee == "simulated" and not allow_simulated:
        return ()
    if allow_simulated:
        platforms = (*platforms, "simulated")
        if "snp" in platforms:
            platforms = (*platforms, SIMULATED_SNP_PLATFORM)
    return tuple(dict.fromkeys(platforms))


def gpu_status(verdict: Verdict, required: GpuRequirement | None) -> dict[str, Any] | None:
    """``status.pods[].gpu``: the first failing GPU's result (or the first GPU's), once appraisal
    reached the GPUs; ``None`` when the route requires none or the CPU evidence failed first."""
    if required is None or not (verdict.gpus or verdict.code.startswith("GPU_")):
        return None
    failing = [g for g in verdict.gpus if not g.passed]
    entry: dict[str, Any] = {"attested": verdict.ok, "code": verdict.code, "count": len(verdict.gpus)}
    if verdict.gpus:
        shown = (failing or list(verdict.gpus))[0]
        optional = {"revocation": shown.revocation, "driverVersion": shown.driver_version,
                    "vbiosVersion": shown.vbios_version}
        entry.update({k: v for k, v in optional.items() if v is not None})
    return entry


def appraise_pod(ev: Evidence, *, nonce: bytes, pod_initdata: bytes | None, route: str,
                 accepted: Mapping[str, str], settings: AppraisalSettings,
                 verifier: VerifierFn | None) -> Appraisal:
    """``accepted`` maps initdata digest -> bundle hash for the revisions allowed to serve."""
    def fail(reason: str, message: str, gpu: dict[str, Any] | None = None) -> Appraisal:
        return Appraisal(False, reason, message, platform=ev.platform, bundle_hash=ev.bundle_hash,
                         initdata_digest=ev.initdata_digest, catalog_hash=ev.catalog_hash,
                         enforcement_mode=ev.enforcement_mode, evidence_digest=ev.evidence_digest,
                         appraised_at=time.time(), gpu=gpu)

    if settings.gpu_problem is not None:
        return fail("GpuRequirementInvalid", settings.gpu_problem)

    if pod_initdata is None:
        return fail("InitdataAnnotationMissing", "pod has no decodable initdata annotation")
    if ev.initdata != pod_initdata:
        return fail("InitdataMismatch", "enclave reports initdata other than the pod's annotation")
    try:
        entry = parse(ev.initdata).cmcp
    except InitdataError as exc:
        return fail("InitdataInvalid", str(exc))
    if entry.route != route:
        return fail("RouteMismatch", f"initdata is for route {entry.route!r}, not {route!r}")
    digest = ev.initdata_digest
    if digest not in accepted:
        if entry.bundle_hash not in accepted.values():
            return fail("BundleHashMismatch",
                        f"initdata pins {entry.bundle_hash}, route expects {sorted(set(accepted.values()))}")
        return fail("InitdataUnexpected", "initdata differs from what the operator renders for this route")
    expected_hash = accepted[digest]
    if ev.bundle_hash != expected_hash or entry.bundle_hash != expected_hash:
        return fail("BundleHashMismatch", f"enclave claims {ev.bundle_hash}, initdata pins "
                                          f"{entry.bundle_hash}, expected {expected_hash}")
    try:
        jwk = json.loads(ev.public_key_jwk)
        key = key_from_jwk(jwk)
    except (ValueError, TypeError) as exc:
        return fail("KeyInvalid", f"enclave public key: {exc}")
    if verifier is None:
        return fail("VerifierUnavailable", "no evidence verifier is installed; refusing to trust")
    try:
        verdict = verifier(ev, nonce=nonce, settings=settings, expected_bundle_hash=expected_hash,
                           expected_initdata=pod_initdata)
    except Exception as exc:  # the verifier crashing is a refusal, never an accept
        return fail("VerifierError", f"{type(exc).__name__}: {exc}")
    gpu = gpu_status(verdict, settings.gpu)
    if not verdict.ok:
        return fail(camel(verdict.code) or "EvidenceRejected", verdict.message, gpu)
    return Appraisal(True, "Attested", f"evidence verified ({verdict.assurance or 'ok'})",
                     platform=ev.platform, bundle_hash=expected_hash, initdata_digest=digest,
                     thumbprint=thumbprint(key), public_jwk={k: str(v) for k, v in jwk.items()},
                     assurance=verdict.assurance, catalog_hash=ev.catalog_hash,
                     enforcement_mode=ev.enforcement_mode, evidence_digest=ev.evidence_digest,
                     appraised_at=time.time(), gpu=gpu)


VerifierLoader = Callable[[], VerifierFn | None]
