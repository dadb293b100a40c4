"""The one appraisal entry point the operator, the gateway, the guard and ``cmcpctl`` share.

:func:`appraise_attestation` never raises: every failure, including a crash in a parser or
in native code, becomes a :class:`Verdict` with ``passed=False`` and a stable code. Order
of checks (the first failure is reported):

1. inputs (platform, nonce size, JWK) -> ``VERIFY_INPUT_INVALID``;
2. evidence authenticity (TDX: dcap-qvl + TCB policy; SNP: VCEK/VLEK chain to the pinned
   ARK + TCB extensions; simulated: only when allowed, simulator signature);
3. debug flags, reference values (MRTD/RTMRs/MEASUREMENT);
4. the measured config field (MRCONFIGID/HOST_DATA) against the initdata digest;
5. claimed bundle/catalog/mode against the measured initdata, then the expected bundle;
6. REPORT_DATA against the binding of key, bundle, catalog, mode and nonce.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.binding import check_nonce
from cmcp_core.crypto import key_from_jwk, public_bytes, public_jwk, thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.simulated import verify_simulated_quote
from cmcp_core.evidence.tdx import TdxQuote
from cmcp_core.verify.bindings import check_claims, check_initdata, check_report_data
from cmcp_core.verify.snp import azure_report_data, decode_snp_evidence, verify_snp_report
from cmcp_core.verify.tdx import verify_tdx_quote
from cmcp_core.verify.verdict import OK, AppraisalPolicy, Assurance, Verdict, VerifyFailure

PLATFORMS = ("tdx", "snp", "simulated")


@dataclass
class _State:
    platform: str
    assurance: Assurance = "none"
    checks: list[str] = field(default_factory=list)
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    measurements: dict[str, str] = field(default_factory=dict)


def _now(now: int | float | datetime | None) -> int:
    if now is None:
        return int(time.time())
    if isinstance(now, datetime):
        return int(now.timestamp())
    return int(now)


def _load_jwk(jwk: str | Mapping[str, Any]) -> Ed25519PublicKey:
    return key_from_jwk(json.loads(jwk) if isinstance(jwk, str) else jwk)


def _tdx_measurements(q: TdxQuote) -> dict[str, str]:
    b = q.body
    out = {
        "mrtd": b.mrtd.hex(),
        "mrconfigid": b.mrconfigid.hex(),
        "mrowner": b.mrowner.hex(),
        "mrownerconfig": b.mrownerconfig.hex(),
        "mrseam": b.mrseam.hex(),
        "td_attributes": b.td_attributes.hex(),
        "xfam": b.xfam.hex(),
        "tee_tcb_svn": b.tee_tcb_svn.hex(),
        "report_data": b.report_data.hex(),
    }
    out.update({f"rtmr{i}": r.hex() for i, r in enumerate(b.rtmrs)})
    return out


def _check_tdx_refs(q: TdxQuote, policy: AppraisalPolicy) -> None:
    if policy.mrtd is not None and not hmac.compare_digest(policy.mrtd, q.body.mrtd):
        raise VerifyFailure(Code.REFERENCE_VALUE_MISMATCH, "MRTD differs from the reference value")
    for index, ref in policy.rtmrs.items():
        if not 0 <= index <= 3 or not hmac.compare_digest(ref, q.body.rtmrs[index]):
            raise VerifyFailure(Code.REFERENCE_VALUE_MISMATCH, f"RTMR{index} differs from its reference")
    if q.body.debug and not policy.allow_debug:
        raise VerifyFailure(Code.DEBUG_ENABLED, "TD attributes have DEBUG set")


def _authenticate(
    st: _State, evidence: bytes, aux: bytes, collateral: Any, now: int, policy: AppraisalPolicy
) -> tuple[bytes, bytes]:
    """Verify the evidence; return (report data as bound, measured config field)."""
    if st.platform == "simulated":
        if not policy.allow_simulated:
            raise VerifyFailure(
                Code.SIMULATED_NOT_ALLOWED, "simulated evidence is accepted only when explicitly allowed"
            )
        q = verify_simulated_quote(evidence, policy.simulator_keys)
        st.assurance = "software-only"
        st.checks.append("simulator-signature")
        st.measurements = _tdx_measurements(q)
        _check_tdx_refs(q, policy)
        return q.body.report_data, q.body.mrconfigid
    if st.platform == "tdx":
        tdx = verify_tdx_quote(evidence, collateral, now, policy)
        st.assurance = "hardware"
        st.tcb_status, st.advisories = tdx.tcb_status, tdx.advisories
        st.checks += ["dcap-qvl", "tcb-status"]
        st.measurements = _tdx_measurements(tdx.quote)
        _check_tdx_refs(tdx.quote, policy)
        return tdx.quote.body.report_data, tdx.quote.body.mrconfigid
    ev = decode_snp_evidence(evidence)
    chain = aux or ev.chain or (collateral if isinstance(collateral, bytes) else None)
    if not chain:
        raise VerifyFailure(Code.COLLATERAL_INVALID, "no VCEK/ASK chain supplied for the SNP report")
    snp = verify_snp_report(ev.report, chain, now, policy)
    r = snp.report
    st.assurance = "hardware"
    st.checks += ["vcek-signature", "amd-chain", "tcb-extensions"]
    st.measurements = {
        "measurement": r.measurement.hex(),
        "host_data": r.host_data.hex(),
        "chip_id": r.chip_id.hex(),
        "reported_tcb": f"{r.reported_tcb:016x}",
        "policy": f"{r.policy:016x}",
        "vmpl": str(r.vmpl),
        "report_data": r.report_data.hex(),
        "product": snp.product,
        "signing_key": snp.signing_key,
    }
    if policy.snp_measurement is not None and not hmac.compare_digest(policy.snp_measurement, r.measurement):
        raise VerifyFailure(Code.REFERENCE_VALUE_MISMATCH, "MEASUREMENT differs from the reference value")
    if r.policy_debug and not policy.allow_debug:
        raise VerifyFailure(Code.DEBUG_ENABLED, "SNP guest policy has DEBUG set")
    report_data = r.report_data
    if ev.runtime_data is not None:
        report_data = azure_report_data(r, ev.runtime_data)
        st.checks.append("azure-runtime-data")
    return report_data, r.host_data


def appraise_attestation(
    platform: str,
    evidence: bytes,
    *,
    initdata: bytes,
    public_key_jwk: str | Mapping[str, Any],
    bundle_hash: str,
    catalog_hash: str,
    enforcement_mode: str,
    nonce: bytes,
    policy: AppraisalPolicy | None = None,
    aux: bytes = b"",
    claimed_report_data: bytes | None = None,
    expected_bundle_hash: str | None = None,
    expected_public_key_jwk: str | Mapping[str, Any] | None = None,
    collateral: Any = None,
    now: int | float | datetime | None = None,
) -> Verdict:
    """Appraise one enclave's attestation. Never raises; see the module docstring for the order.

    ``platform``/``evidence``/``aux``/``initdata``/``public_key_jwk``/the three claimed values and
    ``claimed_report_data`` are what the enclave sent (``AttestResponse``); ``nonce`` is the one
    the verifier chose; ``collateral`` is TDX DCAP collateral (``QuoteCollateralV3`` or JSON) or an
    SNP PEM chain; ``now`` pins the verification time (Unix seconds or datetime).
    """
    policy = policy or AppraisalPolicy()
    st = _State(platform=str(platform))
    jwk: dict[str, str] | None = None
    kid: str | None = None
    try:
        if st.platform not in PLATFORMS or st.platform not in policy.accepted_platforms:
            raise VerifyFailure(Code.EVIDENCE_UNSUPPORTED, f"platform {platform!r} is not accepted")
        if not isinstance(evidence, bytes | bytearray) or not isinstance(initdata, bytes | bytearray):
            raise VerifyFailure(Code.VERIFY_INPUT_INVALID, "evidence and initdata must be bytes")
        try:
            check_nonce(nonce)
            key = _load_jwk(public_key_jwk)
            exp = expected_public_key_jwk
            pinned = None if exp is None else public_bytes(_load_jwk(exp))
        except (ValueError, TypeError) as exc:
            raise VerifyFailure(Code.VERIFY_INPUT_INVALID, f"bad nonce or key: {exc}") from exc
        jwk, kid = public_jwk(key), thumbprint(key)
        for name, value in (
            ("bundle_hash", bundle_hash),
            ("catalog_hash", catalog_hash),
            ("enforcement_mode", enforcement_mode),
        ):
            if not isinstance(value, str):
                raise VerifyFailure(Code.VERIFY_INPUT_INVALID, f"{name} must be a string")
        report_data, measured = _authenticate(
            st, bytes(evidence), bytes(aux or b""), collateral, _now(now), policy
        )
        entry = check_initdata(bytes(initdata), st.platform, measured)
        st.checks.append("initdata-measurement")
        check_claims(
            entry,
            bundle_hash=bundle_hash,
            catalog_hash=catalog_hash,
            mode=enforcement_mode,
            expected_bundle_hash=expected_bundle_hash,
        )
        st.checks.append("claims")
        check_report_data(
            report_data,
            public_key=public_bytes(key),
            bundle_hash=bundle_hash,
            catalog_hash=catalog_hash,
            mode=enforcement_mode,
            nonce=bytes(nonce),
            claimed_report_data=claimed_report_data,
            expected_public_key=pinned,
        )
        st.checks.append("report-data-binding")
    except CmcpError as exc:
        return _verdict(st, False, exc.code.value, exc.detail, jwk, kid, None, None, None)
    except Exception as exc:  # fail closed on anything unforeseen, never propagate
        return _verdict(
            st,
            False,
            Code.VERIFY_INTERNAL_ERROR.value,
            f"{type(exc).__name__}: {exc}",
            jwk,
            kid,
            None,
            None,
            None,
        )
    return _verdict(
        st,
        True,
        OK,
        f"{st.platform} evidence verified ({st.assurance})",
        jwk,
        kid,
        bundle_hash,
        catalog_hash,
        enforcement_mode,
    )


def _verdict(
    st: _State,
    passed: bool,
    code: str,
    message: str,
    jwk: dict[str, str] | None,
    kid: str | None,
    bundle: str | None,
    catalog: str | None,
    mode: str | None,
) -> Verdict:
    return Verdict(
        passed=passed,
        code=code,
        message=message,
        assurance=st.assurance,
        platform=st.platform,
        public_key_jwk=jwk if passed else None,
        key_thumbprint=kid if passed else None,
        bundle_hash=bundle,
        catalog_hash=catalog,
        mode=mode,
        tcb_status=st.tcb_status,
        advisories=st.advisories,
        measurements=dict(st.measurements),
        checks=tuple(st.checks),
    )


def appraise_response(
    response: Any,
    nonce: bytes,
    policy: AppraisalPolicy | None = None,
    *,
    expected_bundle_hash: str | None = None,
    expected_initdata: bytes | None = None,
    expected_public_key_jwk: str | Mapping[str, Any] | None = None,
    collateral: Any = None,
    now: int | float | datetime | None = None,
) -> Verdict:
    """Appraise an ``enclave_pb2.AttestResponse`` (or anything with its fields).

    ``expected_initdata``, when given (the operator rendered it), must equal the initdata the
    enclave returned byte for byte, so the measurement is checked against *our* document.
    """
    try:
        initdata = bytes(response.initdata)
        if expected_initdata is not None and not hmac.compare_digest(initdata, expected_initdata):
            return Verdict(
                passed=False,
                code=Code.INITDATA_MISMATCH.value,
                message="enclave initdata differs from the expected initdata",
                assurance="none",
                platform=str(response.platform),
            )
        return appraise_attestation(
            str(response.platform),
            bytes(response.evidence),
            aux=bytes(response.aux),
            initdata=initdata,
            public_key_jwk=str(response.public_key_jwk),
            bundle_hash=str(response.bundle_hash),
            catalog_hash=str(response.catalog_hash),
            enforcement_mode=str(response.enforcement_mode),
            nonce=nonce,
            policy=policy,
            claimed_report_data=bytes(response.report_data) or None,
            expected_bundle_hash=expected_bundle_hash,
            expected_public_key_jwk=expected_public_key_jwk,
            collateral=collateral,
            now=now,
        )
    except Exception as exc:
        return Verdict(
            passed=False,
            code=Code.VERIFY_INPUT_INVALID.value,
            message=f"unusable attest response: {exc}",
            assurance="none",
            platform="unknown",
        )


def appraise_evidence(
    platform: str,
    evidence: bytes,
    *,
    policy: AppraisalPolicy | None = None,
    aux: bytes = b"",
    collateral: Any = None,
    now: int | float | datetime | None = None,
) -> Verdict:
    """Authenticity, TCB, debug and reference values only — no initdata or binding checks.

    For auditors holding bare evidence (e.g. the real fixtures). A pass says "genuine TEE
    evidence", never "this enclave runs this bundle"; ``checks`` lists what ran. Never raises.
    """
    policy = policy or AppraisalPolicy()
    st = _State(platform=str(platform))
    try:
        if st.platform not in PLATFORMS or st.platform not in policy.accepted_platforms:
            raise VerifyFailure(Code.EVIDENCE_UNSUPPORTED, f"platform {platform!r} is not accepted")
        if not isinstance(evidence, bytes | bytearray):
            raise VerifyFailure(Code.VERIFY_INPUT_INVALID, "evidence must be bytes")
        _authenticate(st, bytes(evidence), bytes(aux or b""), collateral, _now(now), policy)
    except CmcpError as exc:
        return _verdict(st, False, exc.code.value, exc.detail, None, None, None, None, None)
    except Exception as exc:
        return _verdict(
            st,
            False,
            Code.VERIFY_INTERNAL_ERROR.value,
            f"{type(exc).__name__}: {exc}",
            None,
            None,
            None,
            None,
            None,
        )
    return _verdict(
        st,
        True,
        OK,
        f"{st.platform} evidence authentic ({st.assurance}); binding not checked",
        None,
        None,
        None,
        None,
        None,
    )
