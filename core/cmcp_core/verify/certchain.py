"""ECDSA X.509 chains to a pinned root at a pinned time, and stapled OCSP responses for them.

NVIDIA's GPU device chain and its RIM signing chains are ECDSA P-384 / SHA-384 all the way to
a root that ships in package data (:mod:`cmcp_core.data.nvidia`). The root is never taken from
the evidence: a root the evidence carries must be byte-identical to the pinned one. The time is
the caller's (``now``), so an auditor replays an appraisal exactly. Each caller names the codes
its failures carry, so a bad RIM chain and a bad device chain stay apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmcp_core.errors import Code
from cmcp_core.verify.verdict import VerifyFailure


@dataclass(frozen=True)
class ChainCodes:
    invalid: Code
    expired: Code


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def pinned_root(package: str, name: str, sha256: str, what: str) -> x509.Certificate:
    """A root certificate shipped as package data, refused unless it is still the pinned one."""
    pem = resources.files(package).joinpath(name).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if fingerprint(cert) != sha256:
        raise VerifyFailure(Code.VERIFY_INTERNAL_ERROR, f"packaged {what} is not the pinned one")
    return cert


def _at(now: int) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def der_element(buf: bytes, pos: int) -> tuple[int, int]:
    """Return (start of value, end of element) of the DER element at ``pos``."""
    if pos + 2 > len(buf):
        raise ValueError("DER element truncated")
    first = buf[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + 2 + n > len(buf):
            raise ValueError("bad DER length")
        start, length = pos + 2 + n, int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
    if start + length > len(buf):
        raise ValueError("DER element overruns its container")
    return start, start + length


def signature_algorithms(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """The outer and the signed (inner, in TBS) AlgorithmIdentifier, as DER.

    Also refuses a signature BIT STRING with unused bits: cryptography ignores that count,
    so it would be one more unsigned byte an attacker could change.
    """
    der = cert.public_bytes(Encoding.DER)
    body, _ = der_element(der, 0)
    tbs_body, tbs_end = der_element(der, body)
    _, outer_end = der_element(der, tbs_end)
    bits_body, bits_end = der_element(der, outer_end)
    if der[outer_end] != 0x03 or bits_end != len(der) or bits_body >= bits_end or der[bits_body] != 0:
        raise ValueError("signature is not a whole-byte BIT STRING ending the certificate")
    pos = tbs_body
    if der[pos] == 0xA0:  # explicit version
        pos = der_element(der, pos)[1]
    pos = der_element(der, pos)[1]  # serial number
    return der[tbs_end:outer_end], der[pos : der_element(der, pos)[1]]


def _verify_signed_by(issuer: x509.Certificate, cert: x509.Certificate, codes: ChainCodes, what: str) -> None:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerifyFailure(codes.invalid, f"{what}: issuer key is not ECDSA P-384")
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        raise VerifyFailure(codes.invalid, f"{what}: signature is not ECDSA/SHA-384")
    if cert.issuer != issuer.subject:
        raise VerifyFailure(codes.invalid, f"{what}: issuer name is not its issuer's subject")
    # The outer AlgorithmIdentifier and the BIT STRING's unused-bits count are not signed: the
    # first must equal the signed one and the second be zero, so no byte changes unnoticed.
    try:
        outer, inner = signature_algorithms(cert)
    except ValueError as exc:
        raise VerifyFailure(codes.invalid, f"{what}: {exc}") from exc
    if outer != inner:
        raise VerifyFailure(codes.invalid, f"{what}: the outer signature algorithm is not the signed one")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerifyFailure(codes.invalid, f"{what}: signature does not verify") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_chain(
    chain: Sequence[x509.Certificate],
    root: x509.Certificate,
    now: int,
    codes: ChainCodes,
    what: str,
) -> list[x509.Certificate]:
    """Verify ``chain`` (leaf first; the root may end it) up to ``root``; return it ending at root.

    Every issuer must say CA in BasicConstraints (NVIDIA's device and RIM chains do), so a leaf
    key cannot extend the chain. A field that only fails to parse when read (cryptography parses
    lazily) fails as invalid.
    """
    try:
        return _verify_chain(chain, root, now, codes, what)
    except VerifyFailure:
        raise
    except Exception as exc:  # cryptography's lazy parsers raise several unrelated types
        raise VerifyFailure(codes.invalid, f"{what}: a certificate is malformed: {exc}") from exc


def _verify_chain(
    chain: Sequence[x509.Certificate], root: x509.Certificate, now: int, codes: ChainCodes, what: str
) -> list[x509.Certificate]:
    if not chain:
        raise VerifyFailure(codes.invalid, f"{what}: no certificates")
    certs = list(chain)
    if certs[-1].subject == root.subject:
        if certs[-1] != root:
            raise VerifyFailure(codes.invalid, f"{what}: carries a root that is not the pinned one")
    else:
        certs.append(root)
    _verify_signed_by(root, root, codes, f"{what} root")  # our own package data, whole
    for index, cert in enumerate(certs[:-1]):
        issuer = certs[index + 1]
        if not _is_ca(issuer):
            raise VerifyFailure(codes.invalid, f"{what}: certificate {index + 1} issues without being a CA")
        _verify_signed_by(issuer, cert, codes, f"{what} certificate {index}")
    t = _at(now)
    for index, cert in enumerate(certs):
        if not cert.not_valid_before_utc <= t <= cert.not_valid_after_utc:
            valid = f"{cert.not_valid_before_utc.date()}..{cert.not_valid_after_utc.date()}"
            raise VerifyFailure(
                codes.expired,
                f"{what} certificate {index} ({cert.subject.rfc4514_string()}) is valid {valid}, "
                f"not at {t.isoformat()}",
            )
    return certs


def _key_hash(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """RFC 6960 issuerKeyHash: the hash of the issuer's subjectPublicKey bits (an EC point here)."""
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerifyFailure(Code.GPU_OCSP_INVALID, "OCSP issuer key is not ECDSA")
    digest = hashes.Hash(algorithm)
    digest.update(key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))
    return digest.finalize()


def _responder(resp: ocsp.OCSPResponse, issuer: x509.Certificate, what: str) -> x509.Certificate:
    """The issuer itself, or a delegated responder certificate the issuer signed for OCSP."""
    names_issuer = resp.responder_name == issuer.subject if resp.responder_name is not None else (
        resp.responder_key_hash == _key_hash(issuer, hashes.SHA1()))  # noqa: S303 - RFC 6960 ResponderID
    if names_issuer:
        return issuer
    for cert in resp.certificates:
        codes = ChainCodes(Code.GPU_OCSP_INVALID, Code.GPU_OCSP_INVALID)
        _verify_signed_by(issuer, cert, codes, f"{what} OCSP responder")
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku:
            return cert
    raise VerifyFailure(Code.GPU_OCSP_INVALID, f"{what}: OCSP response is not signed by its issuer")


def check_ocsp(
    cert: x509.Certificate, issuer: x509.Certificate, responses: Sequence[bytes], now: int, what: str
) -> str:
    """Find the stapled response for ``cert``; it must be signed, fresh at ``now`` and GOOD."""
    for blob in responses:
        try:
            resp = ocsp.load_der_ocsp_response(blob)
        except ValueError as exc:
            raise VerifyFailure(Code.GPU_OCSP_INVALID, f"{what}: OCSP response does not parse") from exc
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            continue
        if resp.serial_number != cert.serial_number:
            continue
        if resp.issuer_key_hash != _key_hash(issuer, resp.hash_algorithm):
            continue
        responder = _responder(resp, issuer, what)
        key = responder.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or resp.signature_hash_algorithm is None:
            raise VerifyFailure(Code.GPU_OCSP_INVALID, f"{what}: OCSP responder key is not ECDSA")
        try:
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
        except InvalidSignature as exc:
            raise VerifyFailure(Code.GPU_OCSP_INVALID, f"{what}: OCSP signature does not verify") from exc
        t = _at(now)
        if resp.next_update_utc is None or not resp.this_update_utc <= t <= resp.next_update_utc:
            raise VerifyFailure(Code.GPU_OCSP_INVALID, f"{what}: OCSP response is stale at {t.isoformat()}")
        if resp.certificate_status != ocsp.OCSPCertStatus.GOOD:
            raise VerifyFailure(
                Code.GPU_CERT_REVOKED, f"{what}: OCSP says {resp.certificate_status.name.lower()}")
        return "good"
    raise VerifyFailure(Code.GPU_OCSP_INVALID, f"{what}: no stapled OCSP response for certificate "
                        f"{cert.subject.rfc4514_string()}")
