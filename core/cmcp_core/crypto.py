"""Ed25519 keys as cMCP uses them: the enclave key, its JWK, thumbprint and signed envelopes.

A *signed envelope* is the canonical JSON payload plus a detached Ed25519 signature over
``context || payload``; the context string separates decisions, permits and audit entries
so that a signature made for one purpose can never be replayed as another.
"""

from __future__ import annotations

from typing import Any

from agentrust_trace import jwk_thumbprint
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_core.digest import b64url, b64url_decode, jcs

_sodium: Any
try:  # libsodium: the same RFC 8032 signatures as OpenSSL, faster to make and check; signing and
    # verifying sit on every call's path (profiles in docs/benchmarks.md)
    from nacl import bindings as _nacl_bindings
    from nacl.exceptions import CryptoError as _SodiumError

    _sodium = _nacl_bindings
except ImportError:  # pragma: no cover - PyNaCl is a dependency; OpenSSL alone is still correct
    _sodium = None

DECISION_CONTEXT = b"cmcp-decision-v1\x00"
PERMIT_CONTEXT = b"cmcp-permit-v1\x00"
AUDIT_CONTEXT = b"cmcp-audit-entry-v1\x00"


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_bytes(key))}


def key_from_jwk(jwk: Any) -> Ed25519PublicKey:
    """Parse an Ed25519 OKP JWK; ``ValueError`` for anything else."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("expected an Ed25519 OKP JWK")
    raw = b64url_decode(str(jwk.get("x", "")))
    if len(raw) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: the key id every permit and decision names."""
    return str(jwk_thumbprint(public_jwk(key)))


_SECRETS: dict[int, tuple[Ed25519PrivateKey, bytes]] = {}  # id(key) -> (key, libsodium secret key)


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """Ed25519 signature of ``data``: deterministic (RFC 8032), so byte-identical to ``key.sign``.

    Hot path (two signatures per decision): libsodium when present, its expanded secret key
    derived once per key object (the entry keeps the key alive, so its id is not reused).
    """
    if _sodium is None:
        return key.sign(data)
    held = _SECRETS.get(id(key))
    if held is None or held[0] is not key:
        if len(_SECRETS) >= 64:
            _SECRETS.clear()
        _, secret = _sodium.crypto_sign_seed_keypair(key.private_bytes_raw())
        held = _SECRETS[id(key)] = (key, secret)
    return bytes(_sodium.crypto_sign(data, held[1])[:64])


def sign_payload(key: Ed25519PrivateKey, context: bytes, payload: dict[str, Any]) -> tuple[bytes, bytes]:
    """Return ``(canonical payload bytes, signature)``."""
    body = jcs(payload)
    return body, key.sign(context + body)


def verify_payload(key: Ed25519PublicKey, context: bytes, body: bytes, signature: bytes) -> bool:
    """Check a detached signature over ``context || body``; False on any doubt.

    libsodium when present: it accepts exactly the signatures OpenSSL accepts from an honest
    signer, and is stricter on crafted ones (small-order points), which only refuses more.
    """
    if _sodium is not None:
        if len(signature) != 64:
            return False
        try:
            _sodium.crypto_sign_open(signature + context + body, key.public_bytes_raw())
        except _SodiumError:
            return False
        return True
    try:
        key.verify(signature, context + body)
    except InvalidSignature:
        return False
    return True
