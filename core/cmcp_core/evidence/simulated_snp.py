"""The simulated TEE's SEV-SNP report: the real report layout, signed by an in-memory simulator key.

The SNP counterpart of :mod:`cmcp_core.evidence.simulated` (the simulated TDX quote): development
clusters run the *same* parser, HOST_DATA and REPORT_DATA checks as AMD hardware
(:func:`cmcp_core.evidence.snp.parse_report` decodes it unchanged). What makes it unmistakable
for an AMD report:

* CHIP_ID (inside the signed bytes) is ``SIMULATED_CHIP_ID`` (ASCII ``CMCP-SIMULATED-SNP-1``,
  zero-padded), so the marker cannot be stripped without breaking the signature; cMCP's AMD path
  refuses any report carrying it before looking at a certificate;
* the certificate table (configfs-tsm ``auxblob``) holds one entry under ``SIMULATED_VCEK_GUID``,
  not AMD's VCEK/ASK/ARK GUIDs: ``SIMULATED_CERT_LABEL`` followed by the simulator's public key
  (SEC1 uncompressed P-384). There is no certificate, so nothing ever chains to a pinned ARK.

The signature is ECDSA P-384/SHA-384 over bytes 0x000-0x29F, R and S as 72-byte little-endian
integers at 0x2A0, exactly where a VCEK's signature sits. A signature by the key the table
carries proves integrity only; pin ``trusted_keys`` (x||y, 96 bytes) to tie a report to one
simulator, as for the simulated TDX quote.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Collection

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.simulated import SIMULATED_CERT_LABEL
from cmcp_core.evidence.snp import (
    POLICY_RESERVED_ONE,
    POLICY_SMT,
    REPORT_LEN,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNED_LEN,
    SIGNING_KEY_VCEK,
    SnpReport,
    parse_report,
)

# The evidence platform a simulated report is labelled and appraised as (``simulated`` is the
# simulated TDX quote's, kept for compatibility): it names the parser, the HOST_DATA rule and the
# release's reference values, as ``tdx`` / ``snp`` / ``simulated`` do.
SIMULATED_SNP_PLATFORM = "simulated-snp"
SIMULATED_CHIP_ID = b"CMCP-SIMULATED-SNP-1".ljust(64, b"\x00")
SIMULATED_VCEK_GUID = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cmcp:simulated-vcek:v1")
# The genuine simulated SNP guest's launch digest (OVMF, kernel, initrd and command line hashes).
SIMULATED_SNP_MEASUREMENT = hashlib.sha384(b"cmcp-simulated-snp-guest-v1").digest()
SIMULATED_SNP_POLICY = POLICY_RESERVED_ONE | POLICY_SMT  # Kata's default: SMT allowed, no debug
SIMULATED_SNP_VERSION = 3
P384_POINT_LEN = 97  # 0x04 || x || y
_TABLE_ENTRY = struct.Struct("<16sII")


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    nums = key.public_numbers()
    return nums.x.to_bytes(48, "big") + nums.y.to_bytes(48, "big")


def is_simulated_report(report: SnpReport) -> bool:
    """True when the report claims to come from the cMCP simulator rather than an AMD VCEK."""
    return report.chip_id == SIMULATED_CHIP_ID


def simulated_cert_table(attestation_key: bytes) -> bytes:
    """The ``auxblob`` a simulated report comes with: one simulator entry, then the terminator."""
    data = SIMULATED_CERT_LABEL + b"\x04" + attestation_key
    offset = 2 * _TABLE_ENTRY.size
    return (_TABLE_ENTRY.pack(SIMULATED_VCEK_GUID.bytes_le, offset, len(data))
            + _TABLE_ENTRY.pack(bytes(16), 0, 0) + data)


def _simulator_key(aux: bytes) -> bytes:
    """The simulator's public point (x||y) from the table; anything else in it is refused."""
    if len(aux) < 2 * _TABLE_ENTRY.size:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "simulated SNP certificate table is truncated")
    guid, offset, length = _TABLE_ENTRY.unpack_from(aux, 0)
    end_guid, end_offset, end_length = _TABLE_ENTRY.unpack_from(aux, _TABLE_ENTRY.size)
    if uuid.UUID(bytes_le=guid) != SIMULATED_VCEK_GUID or any(end_guid) or end_offset or end_length:
        raise EvidenceError(Code.EVIDENCE_MALFORMED,
                            "certificate table is not the simulator's single entry")
    data = aux[offset:offset + length]
    label_len = len(SIMULATED_CERT_LABEL)
    if (offset != 2 * _TABLE_ENTRY.size or offset + length != len(aux)
            or len(data) != label_len + P384_POINT_LEN or data[:label_len] != SIMULATED_CERT_LABEL
            or data[label_len] != 0x04):
        raise EvidenceError(Code.EVIDENCE_MALFORMED,
                            "simulated SNP certificate entry lacks the simulator label")
    return data[label_len + 1:]


class SimulatedReportSigner:
    """A software "AMD secure processor": one P-384 key generated in memory per instance."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None):
        self._key = private_key if private_key is not None else ec.generate_private_key(ec.SECP384R1())
        if not isinstance(self._key.curve, ec.SECP384R1):
            raise ValueError("simulator key must be ECDSA P-384")
        self.attestation_key: bytes = _point(self._key.public_key())
        self.cert_table: bytes = simulated_cert_table(self.attestation_key)

    def report(self, report_data: bytes, host_data: bytes, *,
               measurement: bytes = SIMULATED_SNP_MEASUREMENT, policy: int = SIMULATED_SNP_POLICY) -> bytes:
        """A version 3 report carrying ``report_data`` (64), ``host_data`` (32), ``measurement`` (48)."""
        if len(report_data) != 64 or len(host_data) != 32 or len(measurement) != 48:
            raise ValueError("report_data, host_data and measurement must be 64, 32 and 48 bytes")
        raw = bytearray(REPORT_LEN)
        struct.pack_into("<IIQ", raw, 0x00, SIMULATED_SNP_VERSION, 0, policy)
        struct.pack_into("<IIQQI", raw, 0x30, 0, SIG_ALGO_ECDSA_P384_SHA384, 0, 0, SIGNING_KEY_VCEK << 2)
        raw[0x50:0x90] = report_data
        raw[0x90:0xC0] = measurement
        raw[0xC0:0xE0] = host_data
        raw[0x1A0:0x1E0] = SIMULATED_CHIP_ID
        r, s = decode_dss_signature(self._key.sign(bytes(raw[:SIGNED_LEN]), ec.ECDSA(hashes.SHA384())))
        raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
        raw[0x2E8:0x330] = s.to_bytes(72, "little")
        return bytes(raw)


def verify_report_signature(report: SnpReport, attestation_key: bytes) -> None:
    """Check the report's ECDSA P-384 signature with the simulator key (x||y)."""
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), b"\x04" + attestation_key)
    except ValueError as exc:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "simulator key is not a P-384 point") from exc
    limit = 1 << 384
    if not (0 < report.signature_r < limit and 0 < report.signature_s < limit):
        raise EvidenceError(Code.EVIDENCE_BAD_SIGNATURE, "simulated report signature R/S out of range")
    try:
        key.verify(encode_dss_signature(report.signature_r, report.signature_s), report.signed_bytes,
                   ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise EvidenceError(Code.EVIDENCE_BAD_SIGNATURE,
                            "simulated report signature does not verify") from exc


def verify_simulated_report(raw: bytes, aux: bytes,
                            trusted_keys: Collection[bytes] | None = None) -> SnpReport:
    """Parse with the SNP parser, require the simulator markers, and check the signature."""
    report = parse_report(raw)
    if not is_simulated_report(report):
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "report does not carry the simulator CHIP_ID")
    attestation_key = _simulator_key(aux)
    verify_report_signature(report, attestation_key)
    if trusted_keys is not None and attestation_key not in trusted_keys:
        raise EvidenceError(Code.EVIDENCE_CHAIN_INVALID, "simulator key is not one of the pinned keys")
    return report
