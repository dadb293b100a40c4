"""The route's enclave endpoints: attested by the gateway itself, sessions pinned by hashing.

A session is pinned to ``(address, key id)`` of the enclave chosen by rendezvous hashing over
the endpoints attested at that moment. Only the pinned enclave holds the session's state, so
if it stops answering, stops attesting, or comes back with another key, the session's calls get
``SESSION_LOST`` — they are never silently moved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cmcp_core.attestation import AttestedEnclave, AttestPolicy, attest
from cmcp_core.decision import verify_decision
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc

log = logging.getLogger("cmcp.gateway")
ERROR_METADATA_KEY = "cmcp-error-code"  # trailing metadata the enclave's gRPC server sets on a refusal
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})


@dataclass
class Endpoint:
    address: str
    channel: Any
    stub: enclave_pb2_grpc.EnclaveStub
    attested: AttestedEnclave | None = None
    error: CmcpError | None = None
    reattest: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Pin:
    address: str
    kid: str


@dataclass(frozen=True)
class Decision:
    document: dict[str, Any]
    decision_json: bytes
    signature: bytes
    permit: str


def _enclave_code(exc: grpc.aio.AioRpcError) -> Code | None:
    """The registered code an enclave put in its trailing metadata, if any (unknown codes: none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            try:
                return Code(value)
            except ValueError:
                return None
    return None


def _score(session_id: str, kid: str) -> bytes:
    return hashlib.blake2b(f"{session_id}\x00{kid}".encode(), digest_size=16).digest()


class EnclavePool:
    def __init__(self, route_name: str, policy: AttestPolicy, decide_timeout: float) -> None:
        self.route_name = route_name
        self.policy = policy
        self.decide_timeout = decide_timeout
        self.endpoints: dict[str, Endpoint] = {}

    # --- membership and attestation -------------------------------------------------------
    async def set_endpoints(self, addresses: Iterable[str]) -> None:
        """Make the endpoint set exactly ``addresses``; new ones are attested before use."""
        wanted = list(dict.fromkeys(addresses))
        for address in list(self.endpoints):
            if address not in wanted:
                await self._drop(address)
        fresh = [a for a in wanted if a not in self.endpoints]
        for address in fresh:
            channel = grpc.aio.insecure_channel(address)
            self.endpoints[address] = Endpoint(address, channel, enclave_pb2_grpc.EnclaveStub(channel))
        await asyncio.gather(*(self._attest(self.endpoints[a]) for a in fresh))

    async def _drop(self, address: str) -> None:
        endpoint = self.endpoints.pop(address)
        if endpoint.reattest is not None:
            endpoint.reattest.cancel()
        await endpoint.channel.close()

    async def _attest(self, endpoint: Endpoint) -> None:
        try:
            endpoint.attested, endpoint.error = (
                await attest(endpoint.stub, endpoint.address, self.policy),
                None,
            )
        except CmcpError as exc:
            endpoint.attested, endpoint.error = None, exc
            log.warning(
                "enclave attestation failed",
                extra={
                    "route": self.route_name,
                    "endpoint": endpoint.address,
                    "code": str(exc.code),
                    "detail": exc.detail,
                },
            )

    async def refresh(self) -> None:
        """Re-attest every endpoint with a fresh nonce."""
        await asyncio.gather(*(self._attest(e) for e in list(self.endpoints.values())))

    def _suspect(self, endpoint: Endpoint) -> None:
        """The enclave stopped answering: distrust it now, re-attest in the background."""
        endpoint.attested = None
        endpoint.error = CmcpError(Code.TEE_UNAVAILABLE, "enclave stopped answering")
        if endpoint.reattest is None or endpoint.reattest.done():
            endpoint.reattest = asyncio.get_running_loop().create_task(self._attest(endpoint))

    def attested(self) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.attested is not None]

    # --- session pinning ------------------------------------------------------------------
    def pick(self, session_id: str) -> Pin:
        candidates = [e.attested for e in self.endpoints.values() if e.attested is not None]
        if not candidates:
            raise CmcpError(Code.TEE_UNAVAILABLE, f"route {self.route_name}: no attested enclave")
        best = max(candidates, key=lambda a: _score(session_id, a.kid))
        return Pin(best.address, best.kid)

    def resolve(self, pin: Pin) -> tuple[Endpoint, AttestedEnclave]:
        endpoint = self.endpoints.get(pin.address)
        attested = endpoint.attested if endpoint is not None else None
        if endpoint is None or attested is None or attested.kid != pin.kid:
            raise CmcpError(Code.SESSION_LOST, "the enclave holding this session is gone")
        return endpoint, attested

    # --- calls ----------------------------------------------------------------------------
    async def _rpc(self, endpoint: Endpoint, name: str, request: Any) -> Any:
        timeout = self.decide_timeout
        try:
            return await getattr(endpoint.stub, name)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNREACHABLE:
                self._suspect(endpoint)
            refused = _enclave_code(exc)
            if refused is not None:  # the enclave refused with a registered code: relay it (still closed)
                raise CmcpError(refused, f"enclave refused {name}: {exc.details()}") from exc
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave {name} exceeded {timeout}s") from exc
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave {name} failed: {exc.code().name}") from exc

    async def decide(
        self,
        pin: Pin,
        *,
        session_id: str,
        call_id: str,
        principal: str,
        method: str,
        tool: str,
        arguments_json: bytes,
        args_digest: str,
        audience: str,
    ) -> Decision:
        """Ask the pinned enclave and verify its signed answer echoes exactly this call."""
        endpoint, attested = self.resolve(pin)
        request = enclave_pb2.DecideRequest(
            session_id=session_id,
            call_id=call_id,
            principal=principal,
            method=method,
            tool=tool,
            arguments_json=arguments_json,
            arguments_digest=args_digest,
            audience=audience,
        )
        resp = await self._rpc(endpoint, "Decide", request)
        document = verify_decision(
            resp.decision_json,
            resp.signature,
            attested.key,
            expected={
                "session_id": session_id,
                "call_id": call_id,
                "principal": principal,
                "method": method,
                "tool": tool,
                "args_digest": args_digest,
                "audience": audience,
                "bundle_hash": attested.bundle_hash,
            },
        )
        if document["effective"] == "allow" and not resp.permit:
            raise CmcpError(Code.DECISION_UNVERIFIED, "an allow without a permit")
        return Decision(document, bytes(resp.decision_json), bytes(resp.signature), resp.permit)

    async def complete(self, pin: Pin, request: Any) -> None:
        endpoint, _ = self.resolve(pin)
        await self._rpc(endpoint, "Complete", request)

    async def list_tools(self, pin: Pin, session_id: str, principal: str) -> list[str]:
        endpoint, _ = self.resolve(pin)
        resp = await self._rpc(
            endpoint,
            "ListTools",
            enclave_pb2.ListToolsRequest(session_id=session_id, principal=principal),
        )
        return list(resp.tools)

    async def close_session(self, pin: Pin, session_id: str, reason: str) -> Any:
        endpoint, _ = self.resolve(pin)
        return await self._rpc(
            endpoint,
            "CloseSession",
            enclave_pb2.CloseSessionRequest(session_id=session_id, reason=reason),
        )

    async def close(self) -> None:
        for address in list(self.endpoints):
            await self._drop(address)


class Refresher:
    """Periodic re-attestation (and endpoint discovery) for a set of pools."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.jobs: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for job in self.jobs:
                try:
                    await job()
                except Exception:
                    log.exception("enclave refresh failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task = None
