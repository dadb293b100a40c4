"""``cmcp_core.crypto``: Ed25519 JWKs, thumbprints and context-separated signed envelopes."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import crypto
from cmcp_core.digest import b64url, jcs


def test_jwk_round_trip_and_thumbprint() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    jwk = crypto.public_jwk(key)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519"
    assert crypto.public_bytes(crypto.key_from_jwk(jwk)) == crypto.public_bytes(key)
    assert crypto.thumbprint(key) == crypto.thumbprint(crypto.key_from_jwk(dict(jwk)))
    other = Ed25519PrivateKey.generate().public_key()
    assert crypto.thumbprint(key) != crypto.thumbprint(other)


def test_thumbprint_is_rfc7638_of_the_required_members() -> None:
    import hashlib

    key = Ed25519PrivateKey.generate().public_key()
    x = crypto.public_jwk(key)["x"]
    expected = b64url(hashlib.sha256(f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()).digest())
    assert crypto.thumbprint(key) == expected


@pytest.mark.parametrize("jwk", [
    None, "key", {"kty": "EC", "crv": "Ed25519", "x": b64url(bytes(32))},
    {"kty": "OKP", "crv": "X25519", "x": b64url(bytes(32))},
    {"kty": "OKP", "crv": "Ed25519"}, {"kty": "OKP", "crv": "Ed25519", "x": b64url(bytes(31))},
])
def test_key_from_jwk_refuses_anything_else(jwk: Any) -> None:
    with pytest.raises(ValueError):
        crypto.key_from_jwk(jwk)


def test_sign_is_identical_to_openssl_and_survives_key_reuse() -> None:
    key = Ed25519PrivateKey.generate()
    for data in (b"", b"a", b"x" * 1000):
        assert crypto.sign(key, data) == key.sign(data)
        assert crypto.sign(key, data) == key.sign(data)  # cached expanded secret
    other = Ed25519PrivateKey.generate()
    assert crypto.sign(other, b"a") == other.sign(b"a") != crypto.sign(key, b"a")


def test_signed_envelope_verifies_only_in_its_own_context() -> None:
    key = Ed25519PrivateKey.generate()
    payload = {"b": 2, "a": [1, "é"]}
    body, sig = crypto.sign_payload(key, crypto.PERMIT_CONTEXT, payload)
    assert body == jcs(payload)
    pub = key.public_key()
    assert crypto.verify_payload(pub, crypto.PERMIT_CONTEXT, body, sig)
    for context in (crypto.DECISION_CONTEXT, crypto.AUDIT_CONTEXT, b""):
        assert not crypto.verify_payload(pub, context, body, sig)


def test_contexts_are_distinct_and_nul_terminated() -> None:
    contexts = {crypto.DECISION_CONTEXT, crypto.PERMIT_CONTEXT, crypto.AUDIT_CONTEXT}
    assert len(contexts) == 3
    assert all(c.endswith(b"\x00") for c in contexts)


def test_verify_payload_fails_closed() -> None:
    key = Ed25519PrivateKey.generate()
    body, sig = crypto.sign_payload(key, crypto.AUDIT_CONTEXT, {"n": 1})
    pub = key.public_key()
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not crypto.verify_payload(pub, crypto.AUDIT_CONTEXT, body, flipped)
    assert not crypto.verify_payload(pub, crypto.AUDIT_CONTEXT, body + b" ", sig)
    assert not crypto.verify_payload(pub, crypto.AUDIT_CONTEXT, body, sig[:63])
    assert not crypto.verify_payload(pub, crypto.AUDIT_CONTEXT, body, sig + b"\x00")
    assert not crypto.verify_payload(pub, crypto.AUDIT_CONTEXT, body, b"")
    stranger = Ed25519PrivateKey.generate().public_key()
    assert not crypto.verify_payload(stranger, crypto.AUDIT_CONTEXT, body, sig)
