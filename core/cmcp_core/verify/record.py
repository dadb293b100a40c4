"""Trust Record and audit-export verification: TRACE's checks, then the ones TRACE leaves to us.

``agentrust_trace.verify_record`` checks schema, profile, freshness and the Ed25519
signature with a pinned key. On top of that a cMCP verifier checks that the record speaks
for the enclave that was attested: ``cnf.jwk`` is the key bound in the evidence,
``policy.bundle_hash``/``enforcement_mode`` are the measured values (and an optional pinned
hash), ``runtime.nonce`` recomputes from the attested values and the chain tip, and
``tool_transcript.hash`` is the tip of the supplied audit export (checked with
:func:`cmcp_core.audit.verify_chain`). GPU evidence the attestation carried was appraised with
it (:mod:`cmcp_core.verify.gpu_requirement`).

The record's own GPU evidence (ADR 0031) comes beside it, never in it: each envelope's SHA-256
must be one the signed record names in a ``gpu-attestation`` reference
(``GPU_EVIDENCE_UNREFERENCED``), every named one must be there (``GPU_EVIDENCE_MISSING``), and each
is appraised for ``gpu_nonce`` of the record's REPORT_DATA, its ``runtime.nonce`` after the
signature (and, with a verdict, its recomputation from the attested values) verified. Only then
do the record's GPUs count towards a required number; TRACE 3.1.2 forbids rejecting a record for
a reference nobody resolved, so without a GPU requirement a record whose evidence is absent passes
as a CPU record.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentrust_trace import verify_record
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.audit import ChainResult, verify_chain
from cmcp_core.crypto import key_from_jwk, public_bytes, public_jwk, thumbprint
from cmcp_core.digest import b64url, b64url_decode
from cmcp_core.errors import CmcpError, Code
from cmcp_core.trust_record import PLATFORMS, gpu_evidence_digest, record_gpu_digests, record_report_data
from cmcp_core.verify.gpu_requirement import MAX_GPUS, GpuRequirement, appraise_gpus
from cmcp_core.verify.verdict import OK, Assurance, GpuVerdict, Verdict, VerifyFailure

DEFAULT_MAX_AGE_SECONDS = 86400


def load_audit_export(raw: bytes) -> list[dict[str, Any]]:
    """An audit export: a JSON array, ``{"entries": [...]}``, or JSON Lines."""
    try:
        text = raw.decode("utf-8").strip()
        if text.startswith("["):
            doc: Any = json.loads(text)
        elif text.startswith("{") and "\n" not in text:
            doc = json.loads(text)
            doc = doc.get("entries") if isinstance(doc, dict) else None
        else:
            doc = [json.loads(line) for line in text.splitlines() if line.strip()]
            if len(doc) == 1 and isinstance(doc[0], dict) and "entries" in doc[0]:
                doc = doc[0]["entries"]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyFailure(Code.VERIFY_INPUT_INVALID, f"audit export is not JSON: {exc}") from exc
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise VerifyFailure(Code.VERIFY_INPUT_INVALID, "audit export must be a list of entry objects")
    return doc


def check_audit(
    entries: Sequence[Mapping[str, Any]], key: Ed25519PublicKey, expected_tip: str | None = None
) -> ChainResult:
    """Verify the chain (the enclave engineer's ``verify_chain``); raise on the first failure."""
    result = verify_chain(entries, key)
    if not result.ok:
        raise VerifyFailure(
            result.code or Code.VERIFY_INTERNAL_ERROR, f"audit entry {result.index}: {result.message}"
        )
    if expected_tip is not None and not hmac.compare_digest(result.tip, expected_tip):
        raise VerifyFailure(
            Code.RECORD_TRANSCRIPT_MISMATCH,
            f"audit chain tip {result.tip} is not the record's {expected_tip}",
        )
    return result


def _get(record: Mapping[str, Any], *path: str) -> Any:
    node: Any = record
    for p in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(p)
    return node


def check_record_gpu_references(record: Mapping[str, Any], envelopes: Sequence[bytes]) -> None:
    """Each envelope is one the signed record names by digest, and every one it names is here."""
    named = list(record_gpu_digests(record))
    if len(envelopes) > MAX_GPUS:
        raise VerifyFailure(Code.GPU_EVIDENCE_MALFORMED, f"more than {MAX_GPUS} GPU envelopes")
    for index, envelope in enumerate(envelopes):
        digest = gpu_evidence_digest(envelope)
        if digest not in named:
            raise VerifyFailure(Code.GPU_EVIDENCE_UNREFERENCED,
                                f"GPU evidence {index} ({digest}) is not named by the record")
        named.remove(digest)
    if named:
        raise VerifyFailure(Code.GPU_EVIDENCE_MISSING,
                            f"the record names {len(named)} more GPU envelope(s) than were supplied")


def signed_report_data(record: Mapping[str, Any]) -> bytes:
    """The REPORT_DATA the record signed (``runtime.nonce``); read only after the record verified."""
    try:
        report_data = b64url_decode(str(_get(record, "runtime", "nonce") or ""))
    except ValueError as exc:
        raise VerifyFailure(Code.RECORD_INVALID, f"runtime.nonce is not base64url: {exc}") from exc
    if len(report_data) != 64:
        raise VerifyFailure(Code.RECORD_INVALID, "runtime.nonce is not 64 bytes of REPORT_DATA")
    return report_data


def verify_trust_record(
    record: Mapping[str, Any],
    *,
    key: Ed25519PublicKey | Mapping[str, Any] | None = None,
    verdict: Verdict | None = None,
    pinned_bundle_hash: str | None = None,
    audit_entries: Sequence[Mapping[str, Any]] | None = None,
    max_age_seconds: int | None = DEFAULT_MAX_AGE_SECONDS,
    now: int | None = None,
    gpu_evidence: Sequence[bytes] | None = None,
    gpu: GpuRequirement | None = None,
    allow_simulated: bool = False,
    gpu_now: int | None = None,
) -> Verdict:
    """Verify a Trust Record; never raises. The key is pinned from ``key`` or a passing ``verdict``.

    With ``verdict`` (an :func:`appraise_attestation` result) the record must name the same key,
    bundle, mode and platform class, and its ``runtime.nonce`` must recompute from them.
    ``gpu_evidence``: the envelopes handed over beside the record (its side file), appraised under
    ``gpu``'s revocation policy at ``gpu_now`` (default ``now``); ``gpu``: at least ``count`` of
    the record's GPUs must verify (``None``: none required).
    """
    checks: list[str] = []
    record_gpus: tuple[GpuVerdict, ...] = ()  # the record's own GPUs, once appraised
    platform = str(_get(record, "runtime", "platform") or "unknown")
    assurance: Assurance = "none"
    kid: str | None = None
    jwk: dict[str, str] | None = None
    try:
        if not isinstance(record, Mapping):
            raise VerifyFailure(Code.RECORD_INVALID, "record is not a JSON object")
        if verdict is not None and not verdict.passed:
            raise VerifyFailure(Code.RECORD_KEY_MISMATCH, f"the attestation did not pass ({verdict.code})")
        try:
            if key is None and verdict is not None and verdict.public_key_jwk is not None:
                key = verdict.public_key_jwk
            if key is None:
                raise VerifyFailure(
                    Code.VERIFY_INPUT_INVALID, "a pinned key (or a passing verdict) is required"
                )
            pinned = key if isinstance(key, Ed25519PublicKey) else key_from_jwk(dict(key))
        except ValueError as exc:
            raise VerifyFailure(
                Code.VERIFY_INPUT_INVALID, f"pinned key is not an Ed25519 JWK: {exc}"
            ) from exc
        jwk, kid = public_jwk(pinned), thumbprint(pinned)
        try:
            verify_record(dict(record), pinned, max_age_seconds=max_age_seconds, now=now)
        except InvalidSignature as exc:
            raise VerifyFailure(
                Code.RECORD_INVALID, "record signature does not verify with the pinned key"
            ) from exc
        except ValueError as exc:
            msg = str(exc)
            stale = "stale" in msg or "in the future" in msg
            raise VerifyFailure(Code.RECORD_STALE if stale else Code.RECORD_INVALID, msg) from exc
        checks.append("trace-verify-record")
        cnf = _get(record, "cnf", "jwk")
        if not isinstance(cnf, Mapping) or {k: cnf.get(k) for k in ("kty", "crv", "x")} != jwk:
            raise VerifyFailure(Code.RECORD_KEY_MISMATCH, "cnf.jwk is not the pinned enclave key")
        if verdict is not None and verdict.public_key_jwk != jwk:
            raise VerifyFailure(Code.RECORD_KEY_MISMATCH, "cnf.jwk is not the key bound in the evidence")
        checks.append("cnf-key")
        bundle = _get(record, "policy", "bundle_hash")
        mode = _get(record, "policy", "enforcement_mode")
        tip = _get(record, "tool_transcript", "hash")
        if verdict is not None:
            assurance = verdict.assurance
            if bundle != verdict.bundle_hash or mode != verdict.mode:
                raise VerifyFailure(
                    Code.RECORD_BUNDLE_MISMATCH,
                    f"record names {bundle} ({mode}); measured {verdict.bundle_hash} ({verdict.mode})",
                )
            if platform != PLATFORMS.get(verdict.platform, "software-only"):
                raise VerifyFailure(
                    Code.RECORD_INVALID,
                    f"record platform {platform!r} does not match {verdict.platform} evidence",
                )
            if (
                not isinstance(tip, str)
                or not isinstance(verdict.catalog_hash, str)
                or not isinstance(mode, str)
            ):
                raise VerifyFailure(Code.RECORD_INVALID, "record lacks transcript hash or mode")
            want = b64url(
                record_report_data(public_bytes(pinned), str(bundle), verdict.catalog_hash, mode, tip)
            )
            if not hmac.compare_digest(str(_get(record, "runtime", "nonce")), want):
                raise VerifyFailure(Code.RECORD_INVALID, "runtime.nonce does not bind the attested values")
            checks += ["measured-bundle", "runtime-nonce"]
        if pinned_bundle_hash is not None and bundle != pinned_bundle_hash:
            raise VerifyFailure(
                Code.RECORD_BUNDLE_MISMATCH, f"record names {bundle}, pinned {pinned_bundle_hash}"
            )
        if audit_entries is not None:
            if not isinstance(tip, str):
                raise VerifyFailure(Code.RECORD_INVALID, "record has no tool_transcript.hash")
            check_audit(audit_entries, pinned, expected_tip=tip)
            checks.append("audit-chain-tip")
        if gpu_evidence is None and gpu is not None:
            named = len(record_gpu_digests(record))
            raise VerifyFailure(Code.GPU_EVIDENCE_MISSING,
                                f"{gpu.count} GPU(s) required; the record names {named} GPU envelope(s) "
                                "and none was supplied")
        if gpu_evidence is not None:
            check_record_gpu_references(record, gpu_evidence)
            checks.append("gpu-references")
            required = gpu or GpuRequirement()
            if len(gpu_evidence) < (gpu.count if gpu else 1):
                raise VerifyFailure(Code.GPU_EVIDENCE_MISSING,
                                    f"{required.count} GPU(s) required; the record names {len(gpu_evidence)}")
            result = appraise_gpus(
                gpu_evidence, GpuRequirement(count=len(gpu_evidence), revocation=required.revocation),
                report_data=signed_report_data(record), allow_simulated=allow_simulated,
                now=gpu_now if gpu_now is not None else now)
            record_gpus = result.verdicts
            if not result.passed:
                raise VerifyFailure(Code(result.code), result.message)
            if any(g.assurance == "software-only" for g in record_gpus) and assurance == "hardware":
                assurance = "software-only"
            checks.append(f"record-gpus:{len(record_gpus)}")
    except CmcpError as exc:
        return Verdict(
            passed=False,
            code=exc.code.value,
            message=exc.detail,
            assurance=assurance,
            platform=platform,
            checks=tuple(checks),
            gpus=record_gpus,
        )
    except Exception as exc:
        return Verdict(
            passed=False,
            code=Code.VERIFY_INTERNAL_ERROR.value,
            message=f"{type(exc).__name__}: {exc}",
            assurance=assurance,
            platform=platform,
            checks=tuple(checks),
        )
    return Verdict(
        passed=True,
        code=OK,
        message="trust record verified",
        assurance=assurance,
        platform=platform,
        public_key_jwk=jwk,
        key_thumbprint=kid,
        bundle_hash=str(bundle),
        mode=str(mode),
        catalog_hash=verdict.catalog_hash if verdict else None,
        checks=tuple(checks) + (tuple(c for c in verdict.checks if c.startswith("gpu:")) if verdict else ()),
        gpus=record_gpus if gpu_evidence is not None else (verdict.gpus if verdict else ()),
    )


def verify_audit_export(
    entries: Sequence[Mapping[str, Any]],
    key: Mapping[str, Any] | Ed25519PublicKey,
    expected_tip: str | None = None,
) -> Verdict:
    """Verify an exported audit chain offline; never raises."""
    try:
        try:
            pinned = key if isinstance(key, Ed25519PublicKey) else key_from_jwk(dict(key))
        except ValueError as exc:
            raise VerifyFailure(Code.VERIFY_INPUT_INVALID, f"key is not an Ed25519 JWK: {exc}") from exc
        result = check_audit(entries, pinned, expected_tip=expected_tip)
    except CmcpError as exc:
        return Verdict(
            passed=False, code=exc.code.value, message=exc.detail, assurance="none", platform="audit"
        )
    except Exception as exc:
        return Verdict(
            passed=False,
            code=Code.VERIFY_INTERNAL_ERROR.value,
            message=f"{type(exc).__name__}: {exc}",
            assurance="none",
            platform="audit",
        )
    return Verdict(
        passed=True,
        code=OK,
        message=f"{result.count} entries verified; tip {result.tip}",
        assurance="none",
        platform="audit",
        public_key_jwk=public_jwk(pinned),
        key_thumbprint=thumbprint(pinned),
        checks=("audit-chain",),
        measurements={"tip": result.tip, "count": str(result.count)},
    )
