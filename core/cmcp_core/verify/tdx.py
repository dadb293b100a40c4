"""Intel TDX quote verification with ``dcap-qvl`` against supplied DCAP collateral.

dcap-qvl checks the PCK chain to Intel's root, the CRLs, the QE report and identity, the
TCB info signature and the quote signature, at a caller-pinned time. Its errors are plain
strings, so :func:`classify_dcap_error` maps them onto stable codes (unknown messages fall
to ``EVIDENCE_REJECTED``; nothing is ever treated as a pass).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.simulated import is_simulated
from cmcp_core.evidence.tdx import INTEL_QE_VENDOR_ID, TdxQuote, parse_quote
from cmcp_core.verify.collateral import MAX_COLLATERAL_BYTES, serving_collateral
from cmcp_core.verify.verdict import AppraisalPolicy, VerifyFailure

# SHA-256 of the DER of "Intel SGX Root CA" (valid to 2049-12-31): the root dcap-qvl 0.7 embeds.
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

# Ordered: the first matching fragment (lower-cased) decides the code.
_DCAP_ERRORS: tuple[tuple[str, Code], ...] = (
    ("expired", Code.COLLATERAL_EXPIRED),
    ("in the future", Code.COLLATERAL_EXPIRED),
    ("notvalidyet", Code.COLLATERAL_EXPIRED),
    ("tcb status is invalid", Code.TCB_STATUS_REJECTED),
    ("decode quote", Code.EVIDENCE_MALFORMED),
    ("failed to decode", Code.COLLATERAL_INVALID),
    ("in quote_collateral", Code.COLLATERAL_INVALID),
    ("signature is invalid", Code.EVIDENCE_BAD_SIGNATURE),
    ("signature", Code.EVIDENCE_BAD_SIGNATURE),
    ("qe report hash mismatch", Code.EVIDENCE_BAD_SIGNATURE),
    ("revoked", Code.EVIDENCE_CHAIN_INVALID),
    ("unknownissuer", Code.EVIDENCE_CHAIN_INVALID),
    ("certificate", Code.EVIDENCE_CHAIN_INVALID),
    ("pck", Code.EVIDENCE_CHAIN_INVALID),
    ("unknown qe vendor", Code.EVIDENCE_UNSUPPORTED),
    ("unsupported", Code.EVIDENCE_UNSUPPORTED),
    ("fmspc mismatch", Code.COLLATERAL_INVALID),
    ("no matching tcb level", Code.COLLATERAL_INVALID),
    ("tcb info", Code.COLLATERAL_INVALID),
    ("tcbinfo", Code.COLLATERAL_INVALID),
    ("qe identity", Code.COLLATERAL_INVALID),
    ("qeidentity", Code.COLLATERAL_INVALID),
    ("crl", Code.COLLATERAL_INVALID),
)


def classify_dcap_error(message: str) -> Code:
    """The headline (first line) decides; the "Caused by" detail is only a fallback."""
    lines = message.strip().lower().splitlines() or [""]
    for text in (lines[0], " ".join(lines)):
        for fragment, code in _DCAP_ERRORS:
            if fragment in text:
                return code
    return Code.EVIDENCE_REJECTED


@dataclass(frozen=True)
class TdxAppraisal:
    quote: TdxQuote
    tcb_status: str
    advisories: tuple[str, ...]


def load_collateral(collateral: Any) -> Any:
    """Accept a ``QuoteCollateralV3``, or its JSON as ``str``/``bytes``/``dict``."""
    if isinstance(collateral, dcap_qvl.QuoteCollateralV3):
        return collateral
    try:
        if isinstance(collateral, bytes | bytearray):
            if len(collateral) > MAX_COLLATERAL_BYTES:
                raise VerifyFailure(Code.COLLATERAL_INVALID, "collateral is too large")
            collateral = bytes(collateral).decode("utf-8")
        if isinstance(collateral, dict):
            collateral = json.dumps(collateral)
        if not isinstance(collateral, str):
            raise VerifyFailure(Code.COLLATERAL_INVALID, "collateral must be QuoteCollateralV3 or its JSON")
        if len(collateral) > MAX_COLLATERAL_BYTES:
            raise VerifyFailure(Code.COLLATERAL_INVALID, "collateral is too large")
        return dcap_qvl.QuoteCollateralV3.from_json(collateral)
    except VerifyFailure:
        raise
    except Exception as exc:  # dcap-qvl raises ValueError; decoding may raise others
        raise VerifyFailure(Code.COLLATERAL_INVALID, f"collateral does not load: {exc}") from exc


def _find(doc: Any, key: str) -> str:
    """Find ``key`` at any depth (TD10 and TD15 nest the report differently)."""
    if isinstance(doc, dict):
        if isinstance(doc.get(key), str):
            return str(doc[key])
        for value in doc.values():
            try:
                return _find(value, key)
            except KeyError:
                continue
    raise KeyError(key)


def _check_same_body(quote: TdxQuote, report: Any) -> None:
    """Guard against a parser differential: dcap-qvl must have verified the body we read."""
    try:
        doc = json.loads(report.to_json())["report"]
        theirs = (bytes.fromhex(_find(doc, "report_data")), bytes.fromhex(_find(doc, "mr_config_id")))
    except Exception as exc:
        raise VerifyFailure(Code.EVIDENCE_MALFORMED, f"dcap-qvl report is unreadable: {exc}") from exc
    if theirs != (quote.body.report_data, quote.body.mrconfigid):
        raise VerifyFailure(Code.EVIDENCE_MALFORMED, "dcap-qvl and cMCP parse different TD report bodies")


def _check_canonical_pck_chain(quote: TdxQuote) -> None:
    """The PCK chain is PEM *text* in the quote; only its DER is signed. Refuse any text that
    is not the canonical PEM of the certificates it decodes to, so no byte of a quote can be
    altered (whitespace, base64 filler bits) without the verdict changing."""
    pem = quote.signature_data.certification.pck_chain_pem
    if pem is None:
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "quote carries no PCK certificate chain")
    text = pem.rstrip(b"\x00")  # QGS may NUL-terminate the chain
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(text)
        canonical = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    except ValueError as exc:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, f"PCK chain does not parse: {exc}") from exc
    if canonical != text:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "PCK chain is not canonical PEM")
    # dcap-qvl anchors at its built-in root and ignores the copy in the quote; pin that copy too.
    root = hashlib.sha256(certs[-1].public_bytes(Encoding.DER)).hexdigest()
    if len(certs) != 3 or root != INTEL_SGX_ROOT_CA_SHA256:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, "PCK chain does not end in Intel's SGX Root CA")


def _dcap_verify(quote: TdxQuote, collateral: Any, now: int) -> Any:
    try:
        return dcap_qvl.verify(quote.raw, collateral, int(now))
    except Exception as exc:
        message = str(exc)
        raise VerifyFailure(classify_dcap_error(message), f"dcap-qvl: {message}") from exc


def verify_tdx_quote(raw: bytes, collateral: Any, now: int, policy: AppraisalPolicy) -> TdxAppraisal:
    """Parse, verify with dcap-qvl at ``now``, and apply the TCB-status policy. Without
    ``collateral`` the serving path's cache directory and PCCS supply it
    (:mod:`cmcp_core.verify.collateral`)."""
    quote = parse_quote(raw)  # EvidenceError on malformed input, before any native code runs
    if is_simulated(quote):
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "quote is from the cMCP simulator, not an Intel QE")
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "quote QE vendor id is not Intel's")
    _check_canonical_pck_chain(quote)
    if collateral is not None:
        report = _dcap_verify(quote, load_collateral(collateral), now)
    else:
        try:
            report = _dcap_verify(quote, load_collateral(serving_collateral(quote, policy)), now)
        except VerifyFailure as exc:
            if exc.code is not Code.COLLATERAL_EXPIRED or not policy.pccs_url:
                raise
            fresh = serving_collateral(quote, policy, refetch=True)
            report = _dcap_verify(quote, load_collateral(fresh), now)
    _check_same_body(quote, report)
    status = str(report.status)
    advisories = tuple(str(a) for a in report.advisory_ids)
    if status not in policy.accepted_tcb_statuses:
        raise VerifyFailure(
            Code.TCB_STATUS_REJECTED,
            f"TCB status {status} not in accepted {sorted(policy.accepted_tcb_statuses)}"
            + (f" (advisories: {', '.join(advisories)})" if advisories else ""),
        )
    bad = sorted(set(advisories) & policy.rejected_advisories)
    if bad:
        raise VerifyFailure(Code.TCB_STATUS_REJECTED, f"rejected advisories present: {', '.join(bad)}")
    return TdxAppraisal(quote=quote, tcb_status=status, advisories=advisories)
