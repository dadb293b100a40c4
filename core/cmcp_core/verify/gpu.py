"""NVIDIA GPU evidence appraised offline: :func:`appraise_gpu` returns a :class:`GpuVerdict`, never raises.

Order of checks (the first failure is reported, each with its own code):

1. the revocation policy is one we know (``ocsp-stapled`` or ``not-checked``)
   -> ``GPU_REVOCATION_UNSUPPORTED``;
2. the envelope and the SPDM transcript decode -> ``GPU_EVIDENCE_MALFORMED``; simulated evidence
   only when allowed -> ``SIMULATED_NOT_ALLOWED``;
3. the certificate chain to the pinned NVIDIA device root (``cmcp_core/data/nvidia``) at the
   verification time -> ``GPU_CHAIN_INVALID`` / ``GPU_CERT_EXPIRED``; the leaf's DICE FWID must be
   the report's;
4. the leaf's ECDSA P-384 signature over request || response -> ``GPU_EVIDENCE_BAD_SIGNATURE``;
5. the request's nonce against the one the caller expects (``cmcp_core.binding.gpu_nonce`` of the
   enclave's CPU REPORT_DATA) -> ``GPU_NONCE_MISMATCH``;
6. revocation: with ``ocsp-stapled`` every non-root certificate of the device and RIM chains needs
   a signed, current, GOOD stapled response (``GPU_OCSP_INVALID`` / ``GPU_CERT_REVOKED``); with
   ``not-checked`` the verdict says ``revocation: not-checked`` — never silently;
7. the driver and VBIOS RIMs (signature and chain to the pinned RIM root, :mod:`.rim`) must name the
   report's versions -> ``GPU_RIM_MISMATCH``; every active golden measurement must be in the report
   -> ``GPU_MEASUREMENT_MISMATCH``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import (
    OPAQUE_PROJECT,
    GpuEvidence,
    GpuReport,
    decode_gpu_evidence,
    parse_gpu_report,
)
from cmcp_core.evidence.gpu_simulated import SIMULATOR_ORG
from cmcp_core.verify.certchain import ChainCodes, check_ocsp, fingerprint, pinned_root, verify_chain
from cmcp_core.verify.rim import RIM_CHAIN, GoldenMeasurement, Rim, signing_chain, verify_rim
from cmcp_core.verify.verdict import OK, Assurance, GpuVerdict, Revocation, VerifyFailure

REVOCATION_POLICIES = ("ocsp-stapled", "not-checked")
# SHA-256 of the DER of cmcp_core/data/nvidia/device_root.pem ("NVIDIA Device Identity CA").
DEVICE_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
DEVICE_CHAIN = ChainCodes(invalid=Code.GPU_CHAIN_INVALID, expired=Code.GPU_CERT_EXPIRED)
OID_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
FWID_LEN = 48
# Measurement 35 (0-based) covers NVDEC0: skipped when the report says NVDEC0 is disabled, as
# NVIDIA's own verifier does.
NVDEC0_MEASUREMENT = 35

@dataclass(frozen=True)
class GpuPolicy:
    """What a GPU appraiser accepts. ``simulator_roots`` pins simulator roots by SHA-256 fingerprint."""

    revocation: str = "not-checked"
    allow_simulated: bool = False
    simulator_roots: frozenset[str] | None = None


@cache
def pinned_device_root() -> x509.Certificate:
    return pinned_root("cmcp_core.data.nvidia", "device_root.pem", DEVICE_ROOT_SHA256, "NVIDIA device root")


@dataclass
class _State:
    assurance: Assurance = "none"
    arch: str | None = None
    revocation: Revocation | None = None
    report: GpuReport | None = None
    claims: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


def _now(now: int | float | datetime | None) -> int:
    if now is None:
        return int(time.time())
    return int(now.timestamp()) if isinstance(now, datetime) else int(now)


def _is_simulator(cert: x509.Certificate) -> bool:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any(a.value == SIMULATOR_ORG for a in orgs)


def _simulator_root(
    chain: Sequence[x509.Certificate], policy: GpuPolicy, codes: ChainCodes, what: str
) -> x509.Certificate:
    """Simulated evidence chains to the simulator root it carries; pinned when the policy says so."""
    root = chain[-1]
    if not _is_simulator(root) or root.issuer != root.subject:
        raise VerifyFailure(codes.invalid, f"{what}: simulated evidence does not end at a simulator root")
    if policy.simulator_roots is not None and fingerprint(root) not in policy.simulator_roots:
        raise VerifyFailure(codes.invalid, f"{what}: simulator root is not one of the pinned roots")
    return root


def _load_certs(ders: Sequence[bytes]) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(d) for d in ders]
    except Exception as exc:  # ValueError, InvalidVersion, ...: cryptography's parse errors
        raise VerifyFailure(Code.GPU_EVIDENCE_MALFORMED, f"GPU certificate does not parse: {exc}") from exc


def _check_fwid(leaf: x509.Certificate, report: GpuReport) -> None:
    """The leaf's DICE TcbInfo ends with the FWID the report names (Hopper reports carry it)."""
    if report.fwid is None:
        return
    try:
        value = leaf.extensions.get_extension_for_oid(OID_DICE_TCB_INFO).value.public_bytes()
    except x509.ExtensionNotFound as exc:
        raise VerifyFailure(Code.GPU_CHAIN_INVALID, "GPU leaf certificate has no DICE FWID") from exc
    except Exception as exc:  # a lazily parsed extension list: DuplicateExtension, ValueError, ...
        raise VerifyFailure(Code.GPU_CHAIN_INVALID, f"GPU leaf certificate is malformed: {exc}") from exc
    if len(report.fwid) != FWID_LEN or not hmac.compare_digest(value[-FWID_LEN:], report.fwid):
        raise VerifyFailure(Code.GPU_CHAIN_INVALID, "GPU leaf certificate's FWID is not the report's")


def _check_signature(leaf: x509.Certificate, report: GpuReport) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerifyFailure(Code.GPU_CHAIN_INVALID, "GPU attestation key is not ECDSA P-384")
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    if not (r > 0 and s > 0):
        raise VerifyFailure(Code.GPU_EVIDENCE_BAD_SIGNATURE, "GPU report signature r or s is zero")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerifyFailure(Code.GPU_EVIDENCE_BAD_SIGNATURE, "GPU report signature does not verify") from exc


def _check_revocation(
    chain: Sequence[x509.Certificate], responses: Sequence[bytes], now: int, what: str
) -> None:
    for index, cert in enumerate(chain[:-1]):
        check_ocsp(cert, chain[index + 1], responses, now, f"{what} certificate {index}")


def _verify_rims(
    blobs: Sequence[bytes], simulated: bool, stapled: Sequence[bytes], policy: GpuPolicy, now: int
) -> list[Rim]:
    """Each RIM's chain (to NVIDIA's RIM root, or the simulator's), signature and revocation."""
    verified = []
    for blob in blobs:
        root = None
        if simulated:
            root = _simulator_root(signing_chain(blob), policy, RIM_CHAIN, "RIM signing chain")
        rim = verify_rim(blob, now, root=root)
        if policy.revocation == "ocsp-stapled":
            _check_revocation(rim.chain, stapled, now, "RIM signing chain")
        verified.append(rim)
    return verified


def _match_rims(report: GpuReport, rims: Sequence[Rim]) -> tuple[Rim, Rim]:
    driver = [r for r in rims if r.version == report.driver_version.lower()]
    vbios = [r for r in rims if r.version == report.vbios_version.lower()]
    if len(driver) != 1 or len(vbios) != 1 or len(rims) != 2:
        raise VerifyFailure(
            Code.GPU_RIM_MISMATCH,
            f"need one driver RIM for {report.driver_version} and one VBIOS RIM for {report.vbios_version}; "
            f"got RIMs for {[r.version for r in rims]}",
        )
    return driver[0], vbios[0]


def _check_measurements(report: GpuReport, driver: Rim, vbios: Rim) -> int:
    """Every active golden measurement is in the report; returns how many were compared."""
    golden: dict[int, GoldenMeasurement] = dict(driver.measurements)
    clash = sorted(set(golden) & set(vbios.measurements))
    if clash:
        raise VerifyFailure(Code.GPU_RIM_MISMATCH, f"driver and VBIOS RIMs both set measurements {clash}")
    golden.update(vbios.measurements)
    mismatched = []
    compared = 0
    for index, want in sorted(golden.items()):
        if index == NVDEC0_MEASUREMENT and report.nvdec0_disabled:
            continue
        compared += 1
        got = report.measurements.get(index + 1)
        if got is None or not any(hmac.compare_digest(got, alt) for alt in want.alternatives):
            mismatched.append(index)
    if mismatched:
        raise VerifyFailure(Code.GPU_MEASUREMENT_MISMATCH,
                            f"GPU measurements {mismatched} (0-based) match none of the RIMs' golden values")
    return compared


def _appraise(
    st: _State, evidence: bytes, nonce: bytes, rims: Sequence[bytes], rim_ocsp: Sequence[bytes],
    policy: GpuPolicy, now: int,
) -> None:
    if policy.revocation not in REVOCATION_POLICIES:
        raise VerifyFailure(Code.GPU_REVOCATION_UNSUPPORTED,
                            f"revocation policy {policy.revocation!r} is not one of {REVOCATION_POLICIES}")
    env: GpuEvidence = decode_gpu_evidence(evidence)
    report = st.report = parse_gpu_report(env.report)
    st.arch = env.arch
    if env.simulated and not policy.allow_simulated:
        raise VerifyFailure(Code.SIMULATED_NOT_ALLOWED, "simulated GPU evidence is accepted only if allowed")
    certs = _load_certs(env.certs)
    if env.simulated:
        root = _simulator_root(certs, policy, DEVICE_CHAIN, "GPU chain")
    else:
        root = pinned_device_root()
    chain = verify_chain(certs, root, now, DEVICE_CHAIN, "GPU chain")
    _check_fwid(chain[0], report)
    st.assurance = "software-only" if env.simulated else "hardware"
    st.checks.append("simulator-chain" if env.simulated else "nvidia-device-chain")
    _check_signature(chain[0], report)
    st.checks.append("spdm-signature")
    if len(nonce) != len(report.request.nonce) or not hmac.compare_digest(report.request.nonce, nonce):
        raise VerifyFailure(Code.GPU_NONCE_MISMATCH,
                            f"GPU report answers nonce {report.request.nonce.hex()}, not the expected one")
    st.checks.append("nonce")
    stapled = tuple(env.ocsp) + tuple(rim_ocsp)
    if policy.revocation == "ocsp-stapled":
        _check_revocation(chain, stapled, now, "GPU chain")
    verified = _verify_rims(rims, env.simulated, stapled, policy, now)
    st.revocation = "ocsp-good" if policy.revocation == "ocsp-stapled" else "not-checked"
    st.checks.append(f"revocation:{st.revocation}")
    st.checks.append("rim-signatures")
    driver, vbios = _match_rims(report, verified)
    st.checks.append("rim-versions")
    matched = _check_measurements(report, driver, vbios)
    st.checks.append("measurements")
    st.claims.update({
        "driver_rim": driver.version,
        "vbios_rim": vbios.version,
        "measurements_matched": str(matched),
        "project": report.opaque.get(OPAQUE_PROJECT, b"").split(b"\x00", 1)[0].decode("ascii", "replace"),
    })
    if report.fwid is not None:
        st.claims["fwid"] = report.fwid.hex()


def appraise_gpu(
    evidence: bytes,
    *,
    nonce: bytes,
    rims: Sequence[bytes],
    policy: GpuPolicy | None = None,
    rim_ocsp: Sequence[bytes] = (),
    now: int | float | datetime | None = None,
) -> GpuVerdict:
    """Appraise one GPU's evidence envelope. Never raises; see the module docstring for the order.

    ``nonce`` is the SPDM nonce the verifier expects (``cmcp_core.binding.gpu_nonce`` of the CPU
    REPORT_DATA it already verified); ``rims`` are the driver and VBIOS RIMs for this GPU; ``rim_ocsp``
    stapled responses for the RIM chains; ``now`` pins the verification time.
    """
    policy = policy or GpuPolicy()
    st = _State()
    try:
        _appraise(st, bytes(evidence), bytes(nonce), list(rims), list(rim_ocsp), policy, _now(now))
    except CmcpError as exc:
        return _verdict(st, False, exc.code.value, exc.detail)
    except Exception as exc:  # fail closed on anything unforeseen, never propagate
        return _verdict(st, False, Code.VERIFY_INTERNAL_ERROR.value, f"{type(exc).__name__}: {exc}")
    return _verdict(st, True, OK, f"GPU evidence verified ({st.assurance}; revocation {st.revocation})")


def _versions(report: GpuReport | None) -> tuple[str | None, str | None]:
    if report is None:
        return None, None
    try:
        return report.driver_version, report.vbios_version
    except CmcpError:
        return None, None


def _verdict(st: _State, passed: bool, code: str, message: str) -> GpuVerdict:
    driver, vbios = _versions(st.report)
    return GpuVerdict(
        passed=passed,
        code=code,
        message=message,
        assurance=st.assurance,
        arch=st.arch,
        revocation=st.revocation,
        driver_version=driver,
        vbios_version=vbios,
        claims=dict(st.claims) if passed else {},
        checks=tuple(st.checks),
    )
