"""Attest an enclave endpoint ourselves: our nonce, the verifier library's appraisal, its key.

Both the guard and the gateway trust an enclave key only through this function, never through
a key list handed over by someone else: fresh evidence bound to a nonce we chose, appraised
against our own policy (simulated TEEs only when explicitly allowed, expected bundle hashes).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import initdata as initdata_mod
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import AppraisalPolicy, appraise_response


@dataclass(frozen=True)
class AttestPolicy:
    allow_simulated: bool = False
    expected_bundle_hashes: frozenset[str] | None = None  # None: any bundle the evidence proves
    audience: str | None = None  # when set, the measured initdata must name this permit audience
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class AttestedEnclave:
    address: str
    kid: str
    key: Ed25519PublicKey
    bundle_hash: str
    catalog_hash: str
    enforcement_mode: str
    platform: str
    assurance: str
    attested_at: float


def _measured_audience(initdata: bytes) -> str:
    try:
        return initdata_mod.parse(initdata).cmcp.audience
    except Exception as exc:  # the verifier already accepted it; anything odd here is still a refusal
        raise CmcpError(Code.EVIDENCE_MALFORMED, f"initdata has no readable cMCP entry: {exc}") from exc


async def attest(stub: enclave_pb2_grpc.EnclaveStub, address: str, policy: AttestPolicy) -> AttestedEnclave:
    """Attest one enclave; a coded ``CmcpError`` for anything short of a verified key."""
    nonce = secrets.token_bytes(32)
    try:
        resp = await stub.Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=policy.timeout_seconds)
    except grpc.aio.AioRpcError as exc:
        raise CmcpError(Code.TEE_UNAVAILABLE, f"{address}: Attest failed: {exc.code().name}") from exc
    verdict = appraise_response(resp, nonce, AppraisalPolicy(allow_simulated=policy.allow_simulated))
    if not verdict.passed:
        try:
            code = Code(verdict.code)
        except ValueError:
            code = Code.VERIFY_INTERNAL_ERROR
        raise CmcpError(code, f"{address}: evidence rejected: {verdict.message}")
    try:
        key = key_from_jwk(json.loads(resp.public_key_jwk))
    except ValueError as exc:
        raise CmcpError(Code.EVIDENCE_MALFORMED, f"{address}: bad public key JWK: {exc}") from exc
    kid = thumbprint(key)
    if verdict.key_thumbprint != kid:
        raise CmcpError(Code.BINDING_KEY_MISMATCH, f"{address}: appraised key differs from the JWK")
    if policy.expected_bundle_hashes is not None and resp.bundle_hash not in policy.expected_bundle_hashes:
        raise CmcpError(Code.ATTESTED_BUNDLE_UNEXPECTED, f"{address}: bundle {resp.bundle_hash} not expected")
    if policy.audience is not None and _measured_audience(bytes(resp.initdata)) != policy.audience:
        raise CmcpError(Code.REFERENCE_VALUE_MISMATCH, f"{address}: enclave is measured for another audience")
    return AttestedEnclave(
        address=address,
        kid=kid,
        key=key,
        bundle_hash=resp.bundle_hash,
        catalog_hash=resp.catalog_hash,
        enforcement_mode=resp.enforcement_mode,
        platform=resp.platform,
        assurance=verdict.assurance,
        attested_at=time.time(),
    )
