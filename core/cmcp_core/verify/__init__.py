"""The verifier: appraisal of TDX / SEV-SNP / simulated evidence, bindings and Trust Records.

Entry points: :func:`appraise_attestation` (and :func:`appraise_response` for an
``AttestResponse``) return a :class:`Verdict` and never raise; :mod:`cmcp_core.verify.record`
checks Trust Records and audit exports.
"""

from __future__ import annotations

from cmcp_core.verify.appraise import appraise_attestation, appraise_evidence, appraise_response
from cmcp_core.verify.record import verify_audit_export, verify_trust_record
from cmcp_core.verify.verdict import AppraisalPolicy, Verdict

__all__ = [
    "AppraisalPolicy",
    "Verdict",
    "appraise_attestation",
    "appraise_evidence",
    "appraise_response",
    "verify_audit_export",
    "verify_trust_record",
]
