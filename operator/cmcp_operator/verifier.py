"""Adapter from the operator's appraisal step to :mod:`cmcp_core.verify` (never a copy of it)."""

from __future__ import annotations

from cmcp_core.verify import AppraisalPolicy, appraise_attestation
from cmcp_operator.pod_appraisal import AppraisalSettings, Evidence, VerdictView, VerifierFn


def core_verifier(pccs_url: str | None = None) -> VerifierFn:
    def verify(ev: Evidence, *, nonce: bytes, settings: AppraisalSettings,
               expected_bundle_hash: str) -> VerdictView:
        policy = AppraisalPolicy(
            accepted_tcb_statuses=frozenset(settings.acceptable_tcb),
            allow_simulated=settings.allow_simulated,
            accepted_platforms=frozenset(settings.allowed_tee),
            pccs_url=pccs_url,
        )
        if ev.platform not in settings.allowed_tee:
            return VerdictView(False, "EVIDENCE_UNSUPPORTED",
                               f"platform {ev.platform!r} is not allowed for this route "
                               f"({', '.join(settings.allowed_tee)})")
        verdict = appraise_attestation(
            ev.platform, ev.evidence, aux=ev.aux, initdata=ev.initdata, public_key_jwk=ev.public_key_jwk,
            bundle_hash=ev.bundle_hash, catalog_hash=ev.catalog_hash, enforcement_mode=ev.enforcement_mode,
            nonce=nonce, policy=policy, claimed_report_data=ev.report_data or None,
            expected_bundle_hash=expected_bundle_hash)
        return VerdictView(ok=verdict.ok, code=str(verdict.code), message=verdict.message,
                           assurance=str(verdict.assurance))

    return verify


def load_verifier() -> VerifierFn:
    return core_verifier()
