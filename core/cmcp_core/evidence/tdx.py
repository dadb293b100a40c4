"""Intel TDX DCAP quotes, versions 4 and 5: a strict, bounds-checked decoder.

Layout (Intel TDX DCAP Quoting Library API, "Quote Format"):

* header, 48 bytes: version u16, attestation key type u16, TEE type u32, QE SVN u16, PCE SVN u16,
  QE vendor id 16, user data 20 (all little-endian);
* v4: TD report body (TD 1.0, 584 bytes) follows the header;
  v5: body type u16 (2 = TD 1.0, 3 = TD 1.5 with 648 bytes), body size u32, then the body;
* signature data length u32, then the signature data: ECDSA P-256 signature (r||s, 64),
  attestation public key (x||y, 64), certification data (type u16, size u32, data).

The quote signature covers everything before the signature-data length: that is
:attr:`TdxQuote.signed_bytes`. The decoder never trusts a length field: every read is
checked, trailing bytes other than zero padding are refused, and any failure is an :class:`EvidenceError` with
``EVIDENCE_MALFORMED`` or ``EVIDENCE_UNSUPPORTED``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError

HEADER_LEN = 48
TD10_BODY_LEN = 584
TD15_BODY_LEN = 648
QE_REPORT_LEN = 384
MAX_QUOTE_BYTES = 64 * 1024  # real quotes with an embedded PCK chain are ~5 KiB

TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3

CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

TD_ATTR_DEBUG = 1 << 0  # TDATTRIBUTES.TUD.DEBUG


class _Reader:
    """A cursor over bytes that raises a coded error instead of reading past the end."""

    def __init__(self, raw: bytes, what: str):
        self.raw = raw
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise EvidenceError(
                Code.EVIDENCE_MALFORMED,
                f"{self.what} truncated: {field} needs {n} bytes at offset {self.pos}, "
                f"{len(self.raw) - self.pos} left",
            )
        out = self.raw[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def end(self) -> None:
        if self.pos != len(self.raw):
            raise EvidenceError(
                Code.EVIDENCE_MALFORMED,
                f"{self.what} has {len(self.raw) - self.pos} trailing bytes at offset {self.pos}",
            )


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """The TD report the quote carries; TD 1.5 adds ``tee_tcb_svn2`` and ``mrservicetd``."""

    body_type: int
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """True when the TD was launched debuggable (the host can read its memory)."""
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class CertificationData:
    """Certification data; for type 6 the QE report fields and the nested data are decoded."""

    cert_type: int
    data: bytes
    qe_report: bytes | None = None
    qe_report_signature: bytes | None = None
    qe_auth_data: bytes | None = None
    inner: CertificationData | None = None

    @property
    def pck_chain_pem(self) -> bytes | None:
        node: CertificationData | None = self
        while node is not None:
            if node.cert_type == CERT_TYPE_PCK_CHAIN:
                return node.data
            node = node.inner
        return None


@dataclass(frozen=True)
class QuoteSignatureData:
    signature: bytes  # ECDSA P-256 r||s, big-endian, 64 bytes
    attestation_key: bytes  # P-256 public point x||y, 64 bytes
    certification: CertificationData


@dataclass(frozen=True)
class TdxQuote:
    header: QuoteHeader
    body: TdReportBody
    signed_bytes: bytes
    signature_data: QuoteSignatureData
    raw: bytes


def _parse_header(r: _Reader) -> QuoteHeader:
    version = r.u16("version")
    att_key_type = r.u16("attestation key type")
    tee_type = r.u32("tee type")
    qe_svn = r.u16("qe svn")
    pce_svn = r.u16("pce svn")
    vendor = r.take(16, "qe vendor id")
    user_data = r.take(20, "user data")
    if version not in (4, 5):
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, f"quote version {version} is not 4 or 5")
    if tee_type != TEE_TYPE_TDX:
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, f"tee type {tee_type:#x} is not TDX (0x81)")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise EvidenceError(
            Code.EVIDENCE_UNSUPPORTED, f"attestation key type {att_key_type} is not ECDSA P-256 (2)"
        )
    return QuoteHeader(version, att_key_type, tee_type, qe_svn, pce_svn, vendor, user_data)


def _parse_body(r: _Reader, body_type: int) -> TdReportBody:
    tee_tcb_svn = r.take(16, "tee_tcb_svn")
    mrseam = r.take(48, "mrseam")
    mrsignerseam = r.take(48, "mrsignerseam")
    seam_attributes = r.take(8, "seam attributes")
    td_attributes = r.take(8, "td attributes")
    xfam = r.take(8, "xfam")
    mrtd = r.take(48, "mrtd")
    mrconfigid = r.take(48, "mrconfigid")
    mrowner = r.take(48, "mrowner")
    mrownerconfig = r.take(48, "mrownerconfig")
    rtmrs = (r.take(48, "rtmr0"), r.take(48, "rtmr1"), r.take(48, "rtmr2"), r.take(48, "rtmr3"))
    report_data = r.take(64, "report data")
    svn2 = servicetd = None
    if body_type == BODY_TYPE_TD15:
        svn2 = r.take(16, "tee_tcb_svn2")
        servicetd = r.take(48, "mrservicetd")
    return TdReportBody(
        body_type,
        tee_tcb_svn,
        mrseam,
        mrsignerseam,
        seam_attributes,
        td_attributes,
        xfam,
        mrtd,
        mrconfigid,
        mrowner,
        mrownerconfig,
        rtmrs,
        report_data,
        svn2,
        servicetd,
    )


def _parse_cert_data(raw: bytes, depth: int = 0) -> CertificationData:
    r = _Reader(raw, "certification data")
    cert_type = r.u16("certification data type")
    size = r.u32("certification data size")
    data = r.take(size, "certification data")
    r.end()
    if cert_type != CERT_TYPE_QE_REPORT:
        return CertificationData(cert_type, data)
    if depth > 0:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "nested QE report certification data")
    q = _Reader(data, "QE report certification data")
    qe_report = q.take(QE_REPORT_LEN, "qe report")
    qe_sig = q.take(64, "qe report signature")
    auth = q.take(q.u16("qe auth data size"), "qe auth data")
    inner = _parse_cert_data(q.raw[q.pos :], depth + 1)
    return CertificationData(cert_type, data, qe_report, qe_sig, auth, inner)


def parse_quote(raw: bytes) -> TdxQuote:
    """Decode a TDX DCAP quote v4/v5; raise :class:`EvidenceError` on anything malformed."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "quote must be bytes")
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_BYTES:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, f"quote is {len(raw)} bytes, over {MAX_QUOTE_BYTES}")
    r = _Reader(raw, "TDX quote")
    header = _parse_header(r)
    if header.version == 4:
        body_type = BODY_TYPE_TD10
    else:
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        expected = {BODY_TYPE_TD10: TD10_BODY_LEN, BODY_TYPE_TD15: TD15_BODY_LEN}.get(body_type)
        if expected is None:
            raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, f"v5 body type {body_type} is not a TD report")
        if body_size != expected:
            raise EvidenceError(
                Code.EVIDENCE_MALFORMED, f"v5 body size {body_size} does not match type {body_type}"
            )
    body = _parse_body(r, body_type)
    signed_end = r.pos
    sig_len = r.u32("signature data length")
    sig_raw = r.take(sig_len, "signature data")
    padding = raw[r.pos :]
    if padding.strip(b"\x00"):
        # Quote buffers from the QGS/configfs arrive zero-padded (the Intel sample carries 70
        # zero bytes); anything else after the signature data is not part of a quote.
        raise EvidenceError(Code.EVIDENCE_MALFORMED, f"{len(padding)} non-zero trailing bytes after quote")
    s = _Reader(sig_raw, "quote signature data")
    signature = s.take(64, "quote signature")
    att_key = s.take(64, "attestation key")
    certification = _parse_cert_data(sig_raw[s.pos :])
    return TdxQuote(
        header=header,
        body=body,
        signed_bytes=raw[:signed_end],
        signature_data=QuoteSignatureData(signature, att_key, certification),
        raw=raw,
    )
