"""The 64-byte REPORT_DATA binding that ties an enclave's key and bundle to its evidence.

``REPORT_DATA = SHA-512(JCS({domain, public_key, bundle_hash, catalog_hash,
enforcement_mode, nonce}))``. SHA-512 fills the field exactly; JCS makes the preimage
unambiguous; the domain tag keeps the hash from meaning anything outside cMCP.

A confidential GPU beside the enclave answers a 32-byte SPDM nonce, derived from the same
binding: ``GPU_NONCE = SHA-256("cmcp-gpu-nonce-v1" || 0x00 || REPORT_DATA)``. GPU and CPU
evidence then name one enclave key and one verifier challenge, and the domain tag keeps the GPU
nonce from ever equalling a CPU REPORT_DATA prefix (docs/adr/0029-gpu-evidence.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cmcp_core.digest import b64url, jcs

BINDING_DOMAIN = "cmcp-enclave-binding-v1"
NONCE_MIN_BYTES = 16
NONCE_MAX_BYTES = 64
GPU_NONCE_DOMAIN = b"cmcp-gpu-nonce-v1"
REPORT_DATA_BYTES = 64


@dataclass(frozen=True)
class Binding:
    public_key: bytes  # raw 32-byte Ed25519 public key
    bundle_hash: str
    catalog_hash: str
    enforcement_mode: str
    nonce: bytes

    def preimage(self) -> bytes:
        return jcs({
            "domain": BINDING_DOMAIN,
            "public_key": b64url(self.public_key),
            "bundle_hash": self.bundle_hash,
            "catalog_hash": self.catalog_hash,
            "enforcement_mode": self.enforcement_mode,
            "nonce": self.nonce.hex(),
        })

    def report_data(self) -> bytes:
        return hashlib.sha512(self.preimage()).digest()

    def gpu_nonce(self) -> bytes:
        """The SPDM nonce of a GPU bound to this enclave and this verifier nonce (:func:`gpu_nonce`)."""
        return gpu_nonce(self.report_data())


def check_nonce(nonce: bytes) -> None:
    """A verifier's nonce must be fresh randomness of a sane size."""
    if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
        raise ValueError(f"nonce must be {NONCE_MIN_BYTES}..{NONCE_MAX_BYTES} bytes, got {len(nonce)}")


def gpu_nonce(report_data: bytes) -> bytes:
    """The SPDM nonce a GPU must answer for the enclave whose CPU report carries ``report_data``."""
    if len(report_data) != REPORT_DATA_BYTES:
        raise ValueError(f"report data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}")
    return hashlib.sha256(GPU_NONCE_DOMAIN + b"\x00" + bytes(report_data)).digest()
