"""The gateway's identity towards the enclave: a signed proof on every call that changes state.

Anyone who reaches an enclave's port could otherwise open sessions, report outcomes or close
another party's session. So the enclave takes those calls only with a proof signed by a gateway
key that its *measured* initdata names (``[cmcp] gateway_keys``: raw Ed25519 public keys,
base64url), which a host cannot change without changing the measurement every verifier pins.

A proof travels as gRPC metadata ``cmcp-gateway-proof`` = ``<key id>.<unix ms>.<signature>``,
the signature (Ed25519, base64url) over ``cmcp-gateway-proof-v1 \\0 rpc \\0 enclave key id \\0
unix ms \\0 sha256(request bytes)``. It is bound to the RPC, to one enclave (a proof made for one
enclave is worthless at another) and to the exact request, and expires after
``MAX_SKEW_SECONDS``; within that window a replay can only repeat the same request. A stream's
proof is made when it opens, over no request bytes: every message on it is the gateway's.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cmcp_core.crypto import public_bytes, sign, thumbprint, verify_payload
from cmcp_core.digest import b64url, b64url_decode
from cmcp_core.errors import CmcpError, Code

METADATA_KEY = "cmcp-gateway-proof"
CONTEXT = b"cmcp-gateway-proof-v1"
MAX_SKEW_SECONDS = 60


def _signed_bytes(rpc: str, enclave_kid: str, millis: int, request: bytes) -> bytes:
    digest = hashlib.sha256(request).hexdigest()
    return b"\0".join((CONTEXT, rpc.encode(), enclave_kid.encode(), str(millis).encode(), digest.encode()))


def make_proof(key: Ed25519PrivateKey, *, rpc: str, enclave_kid: str, request: bytes, now: float) -> str:
    """The gateway's proof for one call of ``rpc`` to the enclave ``enclave_kid``."""
    millis = int(now * 1000)
    signature = sign(key, _signed_bytes(rpc, enclave_kid, millis, request))
    return f"{thumbprint(key.public_key())}.{millis}.{b64url(signature)}"


def check_proof(proof: str | None, trusted: Mapping[str, Ed25519PublicKey], *, rpc: str, enclave_kid: str,
                request: bytes, now: float) -> str:
    """The key id of the gateway that made ``proof``; ``GATEWAY_UNAUTHENTICATED`` for a missing,
    malformed, stale, foreign or forged one."""
    if not proof:
        raise CmcpError(Code.GATEWAY_UNAUTHENTICATED, f"{rpc} needs a gateway proof ({METADATA_KEY})")
    parts = proof.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        raise CmcpError(Code.GATEWAY_UNAUTHENTICATED, "the gateway proof is malformed")
    kid, millis_text, signature_text = parts
    key = trusted.get(kid)
    if key is None:
        raise CmcpError(Code.GATEWAY_UNAUTHENTICATED,
                        f"gateway key {kid[:16]!r} is not in the measured initdata")
    millis = int(millis_text)
    if abs(now - millis / 1000) > MAX_SKEW_SECONDS:
        raise CmcpError(Code.GATEWAY_UNAUTHENTICATED,
                        f"the gateway proof is older or newer than {MAX_SKEW_SECONDS} s")
    try:
        signature = b64url_decode(signature_text)
    except ValueError:
        raise CmcpError(Code.GATEWAY_UNAUTHENTICATED, "the gateway proof is malformed") from None
    if not verify_payload(key, b"", _signed_bytes(rpc, enclave_kid, millis, request), signature):
        raise CmcpError(Code.GATEWAY_UNAUTHENTICATED, "the gateway proof does not verify")
    return kid


def trusted_keys(raw_keys: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """Key id -> key for the base64url raw Ed25519 keys initdata names (``ValueError`` on a bad one)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for raw in raw_keys:
        key = Ed25519PublicKey.from_public_bytes(b64url_decode(raw))
        keys[thumbprint(key)] = key
    return keys


def initdata_value(key: Ed25519PrivateKey) -> str:
    """How initdata names this gateway key: its raw public bytes, base64url."""
    return b64url(public_bytes(key.public_key()))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A gateway key from a PEM (PKCS#8) file; ``ValueError`` if it is not Ed25519."""
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: the gateway key must be Ed25519")
    return key


class _Prover:
    """Adds the gateway's proof to the call details (see :func:`proving`)."""

    def __init__(self, key: Ed25519PrivateKey, enclave_kid: Callable[[], str | None],
                 clock: Callable[[], float]) -> None:
        self.key, self.enclave_kid, self.clock = key, enclave_kid, clock

    def proof(self, details: Any, request: bytes) -> str | None:
        """The proof for this call; ``None`` before attestation (only Attest is called then, and it
        needs none). Shared by the aio and the blocking interceptors."""
        kid = self.enclave_kid()
        if kid is None:
            return None
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        return make_proof(self.key, rpc=method.rsplit("/", 1)[-1], enclave_kid=kid, request=request,
                          now=self.clock())

    def details(self, details: Any, request: bytes) -> Any:
        """``details`` for an aio channel, with the proof added."""
        proof = self.proof(details, request)
        if proof is None:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()), (METADATA_KEY, proof))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)


class _ProvingUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, prover: _Prover) -> None:
        self.prover = prover

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        signed = self.prover.details(details, request.SerializeToString(deterministic=True))
        return await continuation(signed, request)


class _ProvingUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, prover: _Prover) -> None:
        self.prover = prover

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        signed = self.prover.details(details, request.SerializeToString(deterministic=True))
        return await continuation(signed, request)


class _ProvingStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, prover: _Prover) -> None:
        self.prover = prover

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.prover.details(details, b""), requests)


def proving(key: Ed25519PrivateKey, enclave_kid: Callable[[], str | None],
            clock: Callable[[], float] = time.time) -> list[Any]:
    """Client interceptors that sign every call to the enclave whose key id ``enclave_kid()``
    returns (the attested one; ``None`` before attestation). One per call shape: a channel
    files each interceptor under the first shape it implements."""
    prover = _Prover(key, enclave_kid, clock)
    return [_ProvingUnaryUnary(prover), _ProvingUnaryStream(prover), _ProvingStreamStream(prover)]


class _SyncCallDetails(
    collections.namedtuple("_SyncCallDetails",
                           ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """Call details for a blocking channel's interceptors (grpc gives no public constructor)."""


class _SyncProving(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                   grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """The proof for blocking channels (``grpc.intercept_channel``), as :func:`proving` for aio."""

    def __init__(self, prover: _Prover) -> None:
        self.prover = prover

    def _signed(self, details: Any, request: bytes) -> Any:
        proof = self.prover.proof(details, request)
        if proof is None:
            return details
        metadata = [*(details.metadata or ()), (METADATA_KEY, proof)]
        return _SyncCallDetails(details.method, details.timeout, metadata, details.credentials,
                                getattr(details, "wait_for_ready", None),
                                getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request.SerializeToString(deterministic=True)), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request.SerializeToString(deterministic=True)), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._signed(details, b""), requests)


def proving_channel(channel: grpc.Channel, key: Ed25519PrivateKey, enclave_kid: Callable[[], str | None],
                    clock: Callable[[], float] = time.time) -> grpc.Channel:
    """A blocking channel whose calls carry this gateway key's proof (auditors and test tools
    that play the gateway)."""
    return grpc.intercept_channel(channel, _SyncProving(_Prover(key, enclave_kid, clock)))
