"""AMD SEV-SNP report verification: VCEK/VLEK signature, chain to a pinned ARK, TCB extensions.

Chain: VCEK (or VLEK) <- ASK (or ASVK) <- ARK, each link RSASSA-PSS/SHA-384 (salt 48). The
ARK is never taken from the evidence: the one for the product comes from package data
(``cmcp_core/data/amd``), and an ARK the evidence does carry must be byte-identical to it.
The report signature is ECDSA P-384/SHA-384 over bytes 0x000-0x29F, R and S little-endian.
A VCEK's TCB extensions (1.3.6.1.4.1.3704.1.3.x) must equal REPORTED_TCB and its hwID
(1.3.6.1.4.1.3704.1.4) must equal CHIP_ID. CRLs are not fetched (offline verifier).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.simulated_snp import is_simulated_report
from cmcp_core.evidence.snp import SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SnpReport, TcbVersion, parse_report
from cmcp_core.verify.certchain import signature_algorithms
from cmcp_core.verify.verdict import AppraisalPolicy, VerifyFailure

PRODUCTS = ("milan", "genoa", "turin")
MAX_CHAIN_BYTES = 64 * 1024

OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
OID_HWID = "1.3.6.1.4.1.3704.1.4"

# GUIDs of the certificate table the kernel returns as configfs-tsm ``auxblob``.
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


@cache
def pinned_ark(product: str) -> x509.Certificate:
    """The genuine AMD root for a product line, shipped as package data."""
    if product not in PRODUCTS:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"no pinned ARK for product {product!r}")
    pem = resources.files("cmcp_core.data.amd").joinpath(f"ark_{product}.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


def ark_fingerprints() -> dict[str, str]:
    return {p: hashlib.sha256(pinned_ark(p).public_bytes(Encoding.DER)).hexdigest() for p in PRODUCTS}


def _load_der(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():  # AMD VCEKs carry non-positive serials; cryptography warns
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def parse_cert_table(aux: bytes) -> list[x509.Certificate]:
    """Decode the SNP extended-report certificate table (GUID, offset u32, length u32, ...)."""
    certs: list[x509.Certificate] = []
    pos = 0
    while True:
        if pos + 24 > len(aux):
            raise VerifyFailure(Code.EVIDENCE_MALFORMED, "certificate table is not terminated")
        guid = uuid.UUID(bytes_le=aux[pos : pos + 16])
        offset, length = struct.unpack_from("<II", aux, pos + 16)
        pos += 24
        if guid.int == 0:
            return certs
        if offset + length > len(aux) or length == 0:
            raise VerifyFailure(Code.EVIDENCE_MALFORMED, f"certificate table entry {guid} is out of bounds")
        if guid in (GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK):
            certs.append(_load_der(aux[offset : offset + length]))


def load_chain(blob: bytes) -> list[x509.Certificate]:
    """Accept a PEM bundle (VCEK, ASK, ARK in any order) or a binary certificate table."""
    if len(blob) > MAX_CHAIN_BYTES:
        raise VerifyFailure(Code.EVIDENCE_MALFORMED, "certificate chain is too large")
    try:
        if b"-----BEGIN CERTIFICATE-----" in blob:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return x509.load_pem_x509_certificates(blob)
        return parse_cert_table(blob)
    except VerifyFailure:
        raise
    except Exception as exc:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"certificate does not parse: {exc}") from exc


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _verify_pss(issuer: x509.Certificate, cert: x509.Certificate, what: str) -> None:
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"{what} is not signed with RSASSA-PSS")
    # The outer AlgorithmIdentifier is not covered by the signature: it must equal the signed
    # one (and name SHA-384), so no unsigned byte of a certificate can be altered unnoticed.
    outer, inner = signature_algorithms(cert)
    if outer != inner or not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"{what} signature algorithm is not PSS/SHA-384")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"{what} issuer key is not RSA")
    if cert.issuer != issuer.subject:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"{what} issuer name does not match")
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature as exc:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"{what} signature does not verify") from exc


def _check_validity(cert: x509.Certificate, now: int, what: str) -> None:
    t = datetime.fromtimestamp(now, UTC)
    if not cert.not_valid_before_utc <= t <= cert.not_valid_after_utc:
        raise VerifyFailure(Code.COLLATERAL_EXPIRED, f"{what} is not valid at {t.isoformat()}")


def _ext_int(cert: x509.Certificate, oid: str) -> int | None:
    """An AMD SPL extension: a DER INTEGER (0x02, short length, big-endian value)."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    raw = ext.value.public_bytes()
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 8:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"extension {oid} is not a small DER INTEGER")
    return int.from_bytes(raw[2:], "big", signed=True)


def _ext_hwid(cert: x509.Certificate) -> bytes | None:
    try:
        raw = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_HWID)).value.public_bytes()
    except x509.ExtensionNotFound:
        return None
    if len(raw) == 66 and raw[:2] == b"\x04\x40":  # some KDS certs wrap it in an OCTET STRING
        return raw[2:]
    return raw


@dataclass(frozen=True)
class SnpAppraisal:
    report: SnpReport
    product: str
    signing_key: str  # "vcek" | "vlek"
    tcb: TcbVersion


_Chain = tuple[x509.Certificate, x509.Certificate, x509.Certificate | None]


def _pick_chain(certs: list[x509.Certificate]) -> _Chain:
    leaf = [c for c in certs if _cn(c) in ("SEV-VCEK", "SEV-VLEK")]
    ark = [c for c in certs if _cn(c).startswith("ARK-")]
    ask = [c for c in certs if _cn(c).startswith("SEV-") and c not in leaf]
    if len(leaf) != 1 or len(ask) != 1 or len(ark) > 1 or len(leaf) + len(ask) + len(ark) != len(certs):
        raise VerifyFailure(
            Code.EVIDENCE_CHAIN_INVALID,
            f"chain needs one VCEK/VLEK, one ASK/ASVK, at most one ARK; got {[_cn(c) for c in certs]}",
        )
    return leaf[0], ask[0], (ark[0] if ark else None)


def verify_snp_report(raw: bytes, chain_blob: bytes, now: int, policy: AppraisalPolicy) -> SnpAppraisal:
    """Verify the report signature and chain to the pinned ARK; check TCB and chip id."""
    report = parse_report(raw)
    if is_simulated_report(report):
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "report is from the cMCP simulator, not an AMD VCEK")
    try:
        return _verify_snp(report, chain_blob, now, policy)
    except (ValueError, TypeError, IndexError) as exc:  # lazily parsed certificate fields
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"certificate is malformed: {exc}") from exc


def _verify_snp(report: SnpReport, chain_blob: bytes, now: int, policy: AppraisalPolicy) -> SnpAppraisal:
    leaf, ask, given_ark = _pick_chain(load_chain(chain_blob))
    ask_cn = _cn(ask)
    product = ask_cn.rsplit("-", 1)[-1].lower()
    if product not in PRODUCTS:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"unknown AMD product in {ask_cn!r}")
    if report.product is not None and report.product != product:
        raise VerifyFailure(
            Code.EVIDENCE_CHAIN_INVALID, f"report CPUID says {report.product}, chain is for {product}"
        )
    ark = pinned_ark(product)
    if given_ark is not None and given_ark != ark:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"evidence ARK is not the pinned {product} ARK")
    _verify_pss(ark, ark, "ARK")  # integrity of our own package data
    _verify_pss(ark, ask, "ASK")
    _verify_pss(ask, leaf, "VCEK/VLEK")
    for cert, what in ((ark, "ARK"), (ask, "ASK"), (leaf, "VCEK/VLEK")):
        _check_validity(cert, now, what)
    is_vlek = _cn(leaf) == "SEV-VLEK"
    if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise VerifyFailure(Code.EVIDENCE_UNSUPPORTED, f"report signing key {report.signing_key} unsupported")
    if (report.signing_key == SIGNING_KEY_VLEK) != is_vlek:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, "report's signing-key field does not name this key")
    pub = leaf.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP384R1):
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, "VCEK/VLEK key is not ECDSA P-384")
    limit = 1 << 384
    if not (0 < report.signature_r < limit and 0 < report.signature_s < limit):
        raise VerifyFailure(Code.EVIDENCE_BAD_SIGNATURE, "report signature R/S out of range")
    try:
        pub.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature as exc:
        raise VerifyFailure(Code.EVIDENCE_BAD_SIGNATURE, "report signature does not verify (VCEK)") from exc
    tcb = TcbVersion.decode(report.reported_tcb, turin=product == "turin")
    _check_tcb_extensions(leaf, tcb, report, product, is_vlek)
    return SnpAppraisal(report=report, product=product, signing_key="vlek" if is_vlek else "vcek", tcb=tcb)


def _check_tcb_extensions(
    leaf: x509.Certificate, tcb: TcbVersion, report: SnpReport, product: str, is_vlek: bool
) -> None:
    expected = {
        OID_BL_SPL: tcb.bootloader,
        OID_TEE_SPL: tcb.tee,
        OID_SNP_SPL: tcb.snp,
        OID_UCODE_SPL: tcb.microcode,
    }
    if tcb.fmc is not None:
        expected[OID_FMC_SPL] = tcb.fmc
    for oid, want in expected.items():
        got = _ext_int(leaf, oid)
        if got is None:
            raise VerifyFailure(Code.TCB_MISMATCH, f"signing key lacks TCB extension {oid}")
        if got != want:
            raise VerifyFailure(Code.TCB_MISMATCH, f"signing key TCB {oid}={got}, report says {want}")
    if is_vlek or report.mask_chip_id:
        return  # VLEKs are not chip-specific; a masked CHIP_ID is zeros by design
    hwid = _ext_hwid(leaf)
    chip = report.chip_id[:8] if product == "turin" else report.chip_id
    if hwid is None or hwid != chip:
        raise VerifyFailure(Code.TCB_MISMATCH, "VCEK hwID does not equal the report's CHIP_ID")


def azure_report_data(report: SnpReport, runtime_data: bytes) -> bytes:
    """The Azure CVM paravisor form: REPORT_DATA[0:32] = SHA-256(runtime_data), rest zero.

    The guest's own 64 bytes travel as hex in ``runtime_data["user-data"]``; that is the value
    the binding check compares. Returns it after checking the hash.
    """
    if hashlib.sha256(runtime_data).digest() != report.report_data[:32] or any(report.report_data[32:]):
        raise VerifyFailure(
            Code.BINDING_REPORT_DATA_MISMATCH, "REPORT_DATA is not SHA-256 of the Azure runtime data"
        )
    try:
        doc = json.loads(runtime_data)
        user = bytes.fromhex(doc["user-data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise VerifyFailure(Code.EVIDENCE_MALFORMED, "Azure runtime data lacks hex user-data") from exc
    if len(user) != 64:
        raise VerifyFailure(Code.EVIDENCE_MALFORMED, "Azure user-data is not 64 bytes")
    return user


@dataclass(frozen=True)
class SnpEvidence:
    """An SNP evidence bundle: the bare report, or the Azure JSON form with runtime data."""

    report: bytes
    runtime_data: bytes | None
    chain: bytes | None


def decode_snp_evidence(evidence: bytes) -> SnpEvidence:
    """Bare 1184-byte report, or JSON ``{snp_report, runtime_data?, vcek_chain_pem?}`` (base64)."""
    if evidence[:1] != b"{":
        return SnpEvidence(report=evidence, runtime_data=None, chain=None)
    try:
        doc = json.loads(evidence)
        report = base64.b64decode(doc["snp_report"], validate=True)
        rt = doc.get("runtime_data")
        chain = doc.get("vcek_chain_pem")
        return SnpEvidence(
            report=report,
            runtime_data=base64.b64decode(rt, validate=True) if isinstance(rt, str) else None,
            chain=base64.b64decode(chain, validate=True) if isinstance(chain, str) else None,
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, f"SNP evidence JSON is malformed: {exc}") from exc
