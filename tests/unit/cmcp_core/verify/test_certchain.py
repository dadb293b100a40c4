"""ECDSA chains to a pinned root at a pinned time, and stapled OCSP, on generated certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cmcp_core.errors import Code
from cmcp_core.verify.certchain import ChainCodes, check_ocsp, verify_chain
from cmcp_core.verify.verdict import VerifyFailure

CODES = ChainCodes(invalid=Code.GPU_CHAIN_INVALID, expired=Code.GPU_CERT_EXPIRED)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = int((T0 + timedelta(days=1)).timestamp())


def _key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP384R1())


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = True, days: int = 30,
          algorithm: hashes.HashAlgorithm | None = None, eku: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(T0)
               .not_valid_after(T0 + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
        builder = builder.add_extension(usage, critical=False)
    return builder.sign(issuer_key, algorithm or hashes.SHA384())


@pytest.fixture
def pki() -> dict[str, object]:
    root_key, ca_key, leaf_key = _key(), _key(), _key()
    root = _cert("root", root_key, None, root_key)
    ca = _cert("ca", ca_key, root, root_key)
    leaf = _cert("leaf", leaf_key, ca, ca_key, ca=False)
    return {"root": root, "root_key": root_key, "ca": ca, "ca_key": ca_key, "leaf": leaf}


def _code(fn, *args, **kwargs) -> Code:  # type: ignore[no-untyped-def]
    with pytest.raises(VerifyFailure) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_a_good_chain_verifies_with_or_without_the_root_at_its_end(pki) -> None:  # type: ignore[no-untyped-def]
    full = verify_chain([pki["leaf"], pki["ca"]], pki["root"], NOW, CODES, "t")
    assert full == [pki["leaf"], pki["ca"], pki["root"]]
    assert verify_chain([pki["leaf"], pki["ca"], pki["root"]], pki["root"], NOW, CODES, "t") == full


def test_a_chain_ending_at_a_lookalike_root_is_refused(pki) -> None:  # type: ignore[no-untyped-def]
    other = _key()
    lookalike = _cert("root", other, None, other)
    assert _code(verify_chain, [pki["leaf"], pki["ca"], lookalike], pki["root"], NOW, CODES, "t") \
        == Code.GPU_CHAIN_INVALID


def test_a_missing_link_or_a_non_ca_issuer_is_refused(pki) -> None:  # type: ignore[no-untyped-def]
    assert _code(verify_chain, [pki["leaf"]], pki["root"], NOW, CODES, "t") == Code.GPU_CHAIN_INVALID
    leaf_key = _key()
    not_ca = _cert("ca", pki["ca_key"], pki["root"], pki["root_key"], ca=False)
    leaf = _cert("leaf2", leaf_key, not_ca, pki["ca_key"], ca=False)
    assert _code(verify_chain, [leaf, not_ca], pki["root"], NOW, CODES, "t") == Code.GPU_CHAIN_INVALID


def test_a_sha256_or_p256_link_is_refused(pki) -> None:  # type: ignore[no-untyped-def]
    weak = _cert("leaf", _key(), pki["ca"], pki["ca_key"], ca=False, algorithm=hashes.SHA256())
    assert _code(verify_chain, [weak, pki["ca"]], pki["root"], NOW, CODES, "t") == Code.GPU_CHAIN_INVALID
    p256 = _key(ec.SECP256R1())
    small_ca = _cert("ca", p256, pki["root"], pki["root_key"])
    leaf = _cert("leaf", _key(), small_ca, p256, ca=False)
    assert _code(verify_chain, [leaf, small_ca], pki["root"], NOW, CODES, "t") == Code.GPU_CHAIN_INVALID


def test_a_certificate_outside_its_validity_is_expired(pki) -> None:  # type: ignore[no-untyped-def]
    chain = [pki["leaf"], pki["ca"]]
    later = int((T0 + timedelta(days=31)).timestamp())
    assert _code(verify_chain, chain, pki["root"], later, CODES, "t") == Code.GPU_CERT_EXPIRED
    before = int((T0 - timedelta(days=1)).timestamp())
    assert _code(verify_chain, chain, pki["root"], before, CODES, "t") == Code.GPU_CERT_EXPIRED


def _ocsp(pki, *, status=ocsp.OCSPCertStatus.GOOD, signer=None, responder=None,  # type: ignore[no-untyped-def]
          this=T0, next_=T0 + timedelta(days=7)) -> bytes:
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=pki["leaf"], issuer=pki["ca"], algorithm=hashes.SHA256(), cert_status=status, this_update=this,
        next_update=next_, revocation_time=T0 if status == ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, responder or pki["ca"])
    if responder is not None:
        builder = builder.certificates([responder])
    return builder.sign(signer or pki["ca_key"], hashes.SHA384()).public_bytes(Encoding.DER)


def test_a_good_response_from_the_issuer_or_its_delegate_passes(pki) -> None:  # type: ignore[no-untyped-def]
    assert check_ocsp(pki["leaf"], pki["ca"], [_ocsp(pki)], NOW, "t") == "good"
    delegate_key = _key()
    delegate = _cert("ocsp", delegate_key, pki["ca"], pki["ca_key"], ca=False, eku=True)
    blob = _ocsp(pki, signer=delegate_key, responder=delegate)
    assert check_ocsp(pki["leaf"], pki["ca"], [blob], NOW, "t") == "good"


def test_revoked_stale_missing_or_forged_responses_fail(pki) -> None:  # type: ignore[no-untyped-def]
    revoked = _ocsp(pki, status=ocsp.OCSPCertStatus.REVOKED)
    assert _code(check_ocsp, pki["leaf"], pki["ca"], [revoked], NOW, "t") == Code.GPU_CERT_REVOKED
    stale = _ocsp(pki, this=T0 - timedelta(days=9), next_=T0 - timedelta(days=2))
    assert _code(check_ocsp, pki["leaf"], pki["ca"], [stale], NOW, "t") == Code.GPU_OCSP_INVALID
    assert _code(check_ocsp, pki["leaf"], pki["ca"], [], NOW, "t") == Code.GPU_OCSP_INVALID
    assert _code(check_ocsp, pki["leaf"], pki["ca"], [b"junk"], NOW, "t") == Code.GPU_OCSP_INVALID
    rogue_key = _key()
    rogue = _cert("ocsp", rogue_key, None, rogue_key, ca=False, eku=True)  # not issued by the CA
    forged = _ocsp(pki, signer=rogue_key, responder=rogue)
    assert _code(check_ocsp, pki["leaf"], pki["ca"], [forged], NOW, "t") == Code.GPU_OCSP_INVALID
