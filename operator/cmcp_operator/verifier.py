"""Adapter from the operator's appraisal step to :mod:`cmcp_core.verify` (never a copy of it)."""

from __future__ import annotations

from dataclasses import replace

from cmcp_core.attestation import Evidence
from cmcp_core.verify import Verdict, appraise_response
from cmcp_operator.pod_appraisal import AppraisalSettings, VerifierFn


def core_verifier() -> VerifierFn:
    def verify(ev: Evidence, *, nonce: bytes, settings: AppraisalSettings,
               expected_bundle_hash: str, expected_initdata: bytes) -> Verdict:
        if ev.platform not in settings.allowed_tee:
            return Verdict(False, "EVIDENCE_UNSUPPORTED",
                           f"platform {ev.platform!r} is not allowed for this route "
                           f"({', '.join(settings.allowed_tee)})", assurance="none", platform=ev.platform)
        # The operator's policy carries the verified releases: the guest must match one of them
        # (launch measurements, TCB, image and launch-policy digests), and its initdata must be
        # byte for byte the document the operator rendered for the pod.
        # The route may only narrow the operator's platforms, never widen them.
        platforms = settings.policy.accepted_platforms & frozenset(settings.allowed_tee)
        policy = replace(settings.policy, accepted_platforms=platforms)
        return appraise_response(ev, nonce, policy, expected_bundle_hash=expected_bundle_hash,
                                 expected_initdata=expected_initdata, gpu=settings.gpu)

    return verify


def load_verifier() -> VerifierFn:
    return core_verifier()
