"""Adapter from the operator's appraisal step to :mod:`cmcp_core.verify` (never a copy of it)."""

from __future__ import annotations

from cmcp_core.attestation import Evidence
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_response
from cmcp_operator.pod_appraisal import AppraisalSettings, VerifierFn


def core_verifier(pccs_url: str | None = None) -> VerifierFn:
    def verify(ev: Evidence, *, nonce: bytes, settings: AppraisalSettings,
               expected_bundle_hash: str) -> Verdict:
        policy = AppraisalPolicy(
            accepted_tcb_statuses=frozenset(settings.acceptable_tcb),
            allow_simulated=settings.allow_simulated,
            accepted_platforms=frozenset(settings.allowed_tee),
            pccs_url=pccs_url,
        )
        if ev.platform not in settings.allowed_tee:
            return Verdict(False, "EVIDENCE_UNSUPPORTED",
                           f"platform {ev.platform!r} is not allowed for this route "
                           f"({', '.join(settings.allowed_tee)})", assurance="none", platform=ev.platform)
        return appraise_response(ev, nonce, policy, expected_bundle_hash=expected_bundle_hash)

    return verify


def load_verifier() -> VerifierFn:
    return core_verifier()
