"""The one appraisal entry point the operator, the gateway, the guard and ``cmcpctl`` share.

:func:`appraise_attestation` never raises: every failure, including a crash in a parser or
in native code, becomes a :class:`Verdict` with ``passed=False`` and a stable code. Order
of checks (the first failure is reported):

1. inputs (platform, nonce size, JWK) -> ``VERIFY_INPUT_INVALID``;
2. evidence authenticity (TDX: dcap-qvl + TCB policy; SNP: VCEK/VLEK chain to the pinned
   ARK + TCB extensions; simulated TDX quotes and simulated SNP reports: only when allowed,
   simulator signature);
3. debug flags;
4. the measured config field (MRCONFIGID/HOST_DATA) against the initdata digest;
5. the launch measurements, TCB and attributes, and the image and launch-policy rules the
   initdata pins, against a verified release manifest (:mod:`cmcp_core.verify.reference`);
6. claimed bundle/catalog/mode against the measured initdata, then the expected bundle;
7. REPORT_DATA against the binding of key, bundle, catalog, mode and nonce;
8. when the caller requires GPUs (``gpu``, the route's ``spec.gpu``): the GPU envelopes the enclave
   sent, each for the nonce derived from the REPORT_DATA just verified
   (:mod:`cmcp_core.verify.gpu_requirement`); too few -> ``GPU_EVIDENCE_MISSING``, any failed
   GPU verdict fails the whole attestation with its ``GPU_*`` code. Simulated GPU evidence only when
   simulated evidence is allowed, and a software-only GPU makes the whole verdict software-only.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.binding import check_nonce
from cmcp_core.crypto import key_from_jwk, public_bytes, public_jwk, thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.simulated import verify_simulated_quote
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_PLATFORM, verify_simulated_report
from cmcp_core.evidence.snp import SnpReport, TcbVersion
from cmcp_core.evidence.tdx import TdxQuote
from cmcp_core.verify.bindings import check_claims, check_initdata, check_report_data
from cmcp_core.verify.gpu_requirement import GpuRequirement, appraise_gpus
from cmcp_core.verify.reference import SNP_TCB_FIELDS, SnpLaunch, TdxLaunch, match_release
from cmcp_core.verify.snp import azure_report_data, decode_snp_evidence, verify_snp_report
from cmcp_core.verify.tdx import verify_tdx_quote
from cmcp_core.verify.verdict import OK, AppraisalPolicy, Assurance, GpuVerdict, Verdict, VerifyFailure

PLATFORMS = ("tdx", "snp", "simulated", SIMULATED_SNP_PLATFORM)
SIMULATED_PLATFORMS = ("simulated", SIMULATED_SNP_PLATFORM)


@dataclass
class _State:
    platform: str
    assurance: Assurance = "none"
    checks: list[str] = field(default_factory=list)
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    measurements: dict[str, str] = field(default_factory=dict)
    gpus: tuple[GpuVerdict, ...] = ()


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


def _tdx_launch(q: TdxQuote, policy: AppraisalPolicy) -> TdxLaunch:
    if q.body.debug and not policy.allow_debug:
        raise VerifyFailure(Code.DEBUG_ENABLED, "TD attributes have DEBUG set")
    b = q.body
    return TdxLaunch(mrtd=b.mrtd, rtmrs=b.rtmrs, tee_tcb_svn=b.tee_tcb_svn, td_attributes=b.td_attributes)


def _snp_measurements(r: SnpReport) -> dict[str, str]:
    return {
        "measurement": r.measurement.hex(),
        "host_data": r.host_data.hex(),
        "chip_id": r.chip_id.hex(),
        "reported_tcb": f"{r.reported_tcb:016x}",
        "policy": f"{r.policy:016x}",
        "vmpl": str(r.vmpl),
        "report_data": r.report_data.hex(),
    }


def _snp_launch(r: SnpReport, tcb: TcbVersion, policy: AppraisalPolicy) -> SnpLaunch:
    if r.policy_debug and not policy.allow_debug:
        raise VerifyFailure(Code.DEBUG_ENABLED, "SNP guest policy has DEBUG set")
    return SnpLaunch(measurement=r.measurement, policy=r.policy, vmpl=r.vmpl,
                     tcb={name: int(getattr(tcb, name)) for name in SNP_TCB_FIELDS})


@dataclass(frozen=True)
class _Authentic:
    """What authenticated evidence says: the bound report data, the config field, the launch."""

    report_data: bytes
    measured_config: bytes
    launch: TdxLaunch | SnpLaunch


def _authenticate(
    st: _State, evidence: bytes, aux: bytes, collateral: Any, now: int, policy: AppraisalPolicy
) -> _Authentic:
    """Verify the evidence's signatures and debug flags; nothing about what it runs yet."""
    if st.platform in SIMULATED_PLATFORMS and not policy.allow_simulated:
        raise VerifyFailure(
            Code.SIMULATED_NOT_ALLOWED, "simulated evidence is accepted only when explicitly allowed"
        )
    if st.platform == "simulated":
        q = verify_simulated_quote(evidence, policy.simulator_keys)
        st.assurance = "software-only"
        st.checks.append("simulator-signature")
        st.measurements = _tdx_measurements(q)
        return _Authentic(q.body.report_data, q.body.mrconfigid, _tdx_launch(q, policy))
    if st.platform == SIMULATED_SNP_PLATFORM:
        report = verify_simulated_report(evidence, aux, policy.simulator_keys)
        st.assurance = "software-only"
        st.checks.append("simulator-signature")
        st.measurements = _snp_measurements(report)
        launch = _snp_launch(report, TcbVersion.decode(report.reported_tcb), policy)
        return _Authentic(report.report_data, report.host_data, launch)
    if st.platform == "tdx":
        tdx = verify_tdx_quote(evidence, collateral, now, policy)
        st.assurance = "hardware"
        st.tcb_status, st.advisories = tdx.tcb_status, tdx.advisories
        st.checks += ["dcap-qvl", "tcb-status"]
        st.measurements = _tdx_measurements(tdx.quote)
        body = tdx.quote.body
        return _Authentic(body.report_data, body.mrconfigid, _tdx_launch(tdx.quote, policy))
    ev = decode_snp_evidence(evidence)
    chain = aux or ev.chain or (collateral if isinstance(collateral, bytes) else None)
    if not chain:
        raise VerifyFailure(Code.COLLATERAL_INVALID, "no VCEK/ASK chain supplied for the SNP report")
    snp = verify_snp_report(ev.report, chain, now, policy)
    r = snp.report
    st.assurance = "hardware"
    st.checks += ["vcek-signature", "amd-chain", "tcb-extensions"]
    st.measurements = {**_snp_measurements(r), "product": snp.product, "signing_key": snp.signing_key}
    launch = _snp_launch(r, snp.tcb, policy)
    report_data = r.report_data
    if ev.runtime_data is not None:
        report_data = azure_report_data(r, ev.runtime_data)
        st.checks.append("azure-runtime-data")
    return _Authentic(report_data, r.host_data, launch)


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
    gpu_evidence: Sequence[bytes] = (),
    gpu: GpuRequirement | None = None,
) -> Verdict:
    """Appraise one enclave's attestation. Never raises; see the module docstring for the order.

    ``platform``/``evidence``/``aux``/``initdata``/``public_key_jwk``/the three claimed values and
    ``claimed_report_data`` are what the enclave sent (``AttestResponse``); ``nonce`` is the one
    the verifier chose; ``collateral`` is TDX DCAP collateral (``QuoteCollateralV3`` or JSON) or an
    SNP PEM chain; ``now`` pins the verification time (Unix seconds or datetime); ``gpu_evidence``
    are the enclave's GPU envelopes, appraised only when ``gpu`` (the route's requirement) is given.
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
        authentic = _authenticate(st, bytes(evidence), bytes(aux or b""), collateral, _now(now), policy)
        doc = check_initdata(bytes(initdata), st.platform, authentic.measured_config)
        entry = doc.cmcp
        st.checks.append("initdata-measurement")
        release = match_release(st.platform, authentic.launch, doc, policy.releases)
        st.checks.append(f"release:{release.version}")
        check_claims(
            entry,
            bundle_hash=bundle_hash,
            catalog_hash=catalog_hash,
            mode=enforcement_mode,
            expected_bundle_hash=expected_bundle_hash,
        )
        st.checks.append("claims")
        check_report_data(
            authentic.report_data,
            public_key=public_bytes(key),
            bundle_hash=bundle_hash,
            catalog_hash=catalog_hash,
            mode=enforcement_mode,
            nonce=bytes(nonce),
            claimed_report_data=claimed_report_data,
            expected_public_key=pinned,
        )
        st.checks.append("report-data-binding")
        if gpu is not None:
            _check_gpus(st, gpu_evidence, gpu, authentic.report_data, policy, now)
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


def _check_gpus(
    st: _State, envelopes: Sequence[bytes], requirement: GpuRequirement, report_data: bytes,
    policy: AppraisalPolicy, now: int | float | datetime | None,
) -> None:
    if isinstance(envelopes, bytes | bytearray | str):
        raise VerifyFailure(Code.VERIFY_INPUT_INVALID, "gpu_evidence must be a list of envelopes")
    gpus = appraise_gpus([bytes(e) for e in envelopes], requirement, report_data=report_data,
                         allow_simulated=policy.allow_simulated, now=_now(now))
    st.gpus = gpus.verdicts
    if not gpus.passed:
        raise VerifyFailure(Code(gpus.code), gpus.message)
    if any(v.assurance != "hardware" for v in gpus.verdicts):
        st.assurance = "software-only"
    st.checks.append(f"gpu:{len(gpus.verdicts)}")


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
        gpus=st.gpus,
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
    gpu: GpuRequirement | None = None,
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
            gpu_evidence=[bytes(e) for e in getattr(response, "gpu_evidence", ())],
            gpu=gpu,
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
        authentic = _authenticate(st, bytes(evidence), bytes(aux or b""), collateral, _now(now), policy)
        release = match_release(st.platform, authentic.launch, None, policy.releases)
        st.checks.append(f"release:{release.version}")
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
