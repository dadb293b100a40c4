"""The simulated TEE's quote: the real TDX v4 byte layout, signed by an in-memory simulator key.

It exists so that development clusters exercise the *same* parser, binding and initdata checks
as hardware (:func:`cmcp_core.evidence.tdx.parse_quote` decodes it unchanged). What makes it
unmistakable for an Intel quote:

* header QE vendor id = ``SIMULATED_QE_VENDOR_ID`` (ASCII ``CMCP-SIMULATED-1``), never Intel's
  ``939a7233-f79c-4ca9-940a-0db3957f0607``; dcap-qvl rejects it, and cMCP's verifier routes
  it to the simulated path only when the caller allows simulated evidence;
* certification data type ``SIMULATED_CERT_TYPE`` (0x8001, outside Intel's 1..7), whose data
  is the ASCII label ``SIMULATED_CERT_LABEL`` — there is no QE report and no PCK chain.

The quote signature is ECDSA P-256 (r||s, big-endian) over header+body, and the signature data
carries the attestation public key (x||y) exactly where real quotes carry it. A signature from
the embedded key proves integrity only; pin ``trusted_keys`` to tie a quote to one simulator.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.tdx import (
    ATT_KEY_ECDSA_P256,
    TEE_TYPE_TDX,
    TdxQuote,
    parse_quote,
)

SIMULATED_QE_VENDOR_ID = b"CMCP-SIMULATED-1"
SIMULATED_CERT_TYPE = 0x8001
SIMULATED_CERT_LABEL = b"cmcp-simulated-tee-v1"
SIMULATED_MRTD = hashlib.sha384(b"cmcp-simulated-td-v1").digest()
# The genuine simulated guest's boot chain (firmware, kernel, initrd); RTMR3 stays zero.
SIMULATED_RTMRS: tuple[bytes, bytes, bytes] = (
    hashlib.sha384(b"cmcp-simulated-rtmr0-v1").digest(),
    hashlib.sha384(b"cmcp-simulated-rtmr1-v1").digest(),
    hashlib.sha384(b"cmcp-simulated-rtmr2-v1").digest(),
)
_ZERO48 = bytes(48)


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    nums = key.public_numbers()
    return nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def is_simulated(quote: TdxQuote) -> bool:
    """True when the quote claims to come from the cMCP simulator rather than an Intel QE."""
    return quote.header.qe_vendor_id == SIMULATED_QE_VENDOR_ID


class SimulatedQuoteSigner:
    """A software "quoting enclave": one P-256 key generated in memory per instance."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None):
        self._key = private_key if private_key is not None else ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self._key.curve, ec.SECP256R1):
            raise ValueError("simulator key must be ECDSA P-256")
        self.attestation_key: bytes = _point(self._key.public_key())

    def quote(
        self,
        report_data: bytes,
        mrconfigid: bytes,
        *,
        mrtd: bytes = SIMULATED_MRTD,
        rtmrs: tuple[bytes, bytes, bytes, bytes] = (*SIMULATED_RTMRS, _ZERO48),
    ) -> bytes:
        """Return a TDX v4 quote whose body carries ``report_data`` (64) and ``mrconfigid`` (48)."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        if len(mrconfigid) != 48 or len(mrtd) != 48 or any(len(r) != 48 for r in rtmrs):
            raise ValueError("mrconfigid, mrtd and each rtmr must be 48 bytes")
        header = struct.pack("<HHIHH", 4, ATT_KEY_ECDSA_P256, TEE_TYPE_TDX, 0, 0)
        header += SIMULATED_QE_VENDOR_ID + bytes(20)
        body = b"".join(
            [
                bytes(16),  # tee_tcb_svn
                _ZERO48,  # mrseam
                _ZERO48,  # mrsignerseam
                bytes(8),  # seam attributes
                bytes(8),  # td attributes: DEBUG clear
                bytes(8),  # xfam
                mrtd,
                mrconfigid,
                _ZERO48,  # mrowner
                _ZERO48,  # mrownerconfig
                *rtmrs,
                report_data,
            ]
        )
        signed = header + body
        r, s = decode_dss_signature(self._key.sign(signed, ec.ECDSA(hashes.SHA256())))
        cert = struct.pack("<HI", SIMULATED_CERT_TYPE, len(SIMULATED_CERT_LABEL)) + SIMULATED_CERT_LABEL
        sig_data = r.to_bytes(32, "big") + s.to_bytes(32, "big") + self.attestation_key + cert
        return signed + struct.pack("<I", len(sig_data)) + sig_data


def verify_quote_signature(quote: TdxQuote) -> None:
    """Check the ECDSA P-256 quote signature with the attestation key the quote carries."""
    sig = quote.signature_data
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + sig.attestation_key)
    except ValueError as exc:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "attestation key is not a P-256 point") from exc
    r, s = int.from_bytes(sig.signature[:32], "big"), int.from_bytes(sig.signature[32:], "big")
    der = encode_dss_signature(r, s)
    try:
        key.verify(der, quote.signed_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise EvidenceError(Code.EVIDENCE_BAD_SIGNATURE, "simulated quote signature does not verify") from exc


def verify_simulated_quote(raw: bytes, trusted_keys: Collection[bytes] | None = None) -> TdxQuote:
    """Parse with the TDX parser, require the simulator markers, and check the signature."""
    quote = parse_quote(raw)
    if not is_simulated(quote):
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "quote does not carry the simulator QE vendor id")
    cert = quote.signature_data.certification
    if cert.cert_type != SIMULATED_CERT_TYPE or cert.data != SIMULATED_CERT_LABEL:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "simulated quote lacks the simulator certification data")
    if quote.header.version != 4:
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, "simulated quotes are version 4")
    verify_quote_signature(quote)
    if trusted_keys is not None and quote.signature_data.attestation_key not in trusted_keys:
        raise EvidenceError(Code.EVIDENCE_CHAIN_INVALID, "simulator key is not one of the pinned keys")
    return quote
