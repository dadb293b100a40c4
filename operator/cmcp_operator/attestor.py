"""Ask one enclave for fresh evidence: a 32-byte nonce of our choosing, one gRPC call.

The channel is plaintext on purpose: nothing in the answer is trusted until the evidence
binds the key and hashes to our nonce, which the verifier checks.
"""

from __future__ import annotations

import secrets
from typing import Protocol

import grpc

from cmcp_core.attestation import Evidence
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_operator.constants import ENCLAVE_PORT

NONCE_BYTES = 32


class EnclaveUnreachable(Exception):
    """The pod did not answer Attest (not started yet, crashed, or network)."""


class EvidenceFetcher(Protocol):
    """What the route controller calls for evidence: :func:`fetch_evidence`, or a test's fake."""

    async def __call__(self, address: str, *, deadline: float) -> tuple[bytes, Evidence]: ...


async def fetch_evidence(address: str, *, deadline: float,
                         port: int = ENCLAVE_PORT) -> tuple[bytes, Evidence]:
    nonce = secrets.token_bytes(NONCE_BYTES)
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        try:
            resp = await stub.Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            raise EnclaveUnreachable(f"{exc.code().name}: {exc.details()}") from exc
    return nonce, Evidence.from_response(resp)
