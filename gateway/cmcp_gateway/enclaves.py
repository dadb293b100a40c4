"""The route's enclave endpoints: attested by the gateway itself, sessions pinned by hashing.

A session is pinned to ``(address, key id)`` of the enclave chosen by rendezvous hashing over
the endpoints attested at that moment. Only the pinned enclave holds the session's state, so
if it stops answering, stops attesting, or comes back with another key, the session's calls get
``SESSION_LOST`` — they are never silently moved.

Outcomes (``Complete``) are queued per endpoint and ride on the next ``Decide`` or
``CloseSession`` to that enclave (``completes`` field), which records them before deciding or
closing and says how many it handled (``completes_handled``); an outcome nothing carries within
``OUTCOME_FLUSH_SECONDS`` goes as its own ``Complete``. An enclave that does not acknowledge
carried outcomes (one that predates the field) gets them again as ``Complete`` calls and is
not given any more to carry. ``close_session`` first waits for in-flight flushes, then carries
the rest (or, to an enclave not yet known to carry, sends them first), so the session's Trust
Record covers every outcome reported before it; ``close`` flushes all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson

from cmcp_core.attestation import AttestedEnclave, AttestPolicy, attest
from cmcp_core.decision import verify_decision
from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_gateway.decide_stream import STREAM_MESSAGE_MAX, DecisionStream

log = logging.getLogger("cmcp.gateway")
ERROR_METADATA_KEY = "cmcp-error-code"  # trailing metadata the enclave's gRPC server sets on a refusal
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})
# The decision stream is long-lived and often idle: HTTP/2 keepalive pings (also without data
# frames) find a peer that vanished without a reset within ~40 s instead of TCP's minutes. The
# enclave accepts pings this often (cmcp_enclave.server.MIN_PING_INTERVAL_MS), so it never
# answers them with GOAWAY "too_many_pings".
KEEPALIVE_MS = 30_000
OUTCOME_FLUSH_SECONDS = 0.02  # an outcome no Decide carried by then is sent on its own
MAX_CARRIED = 64  # outcomes one Decide / CloseSession carries at most

# (session_id, call_id, result or None, error code): an outcome before its digest is computed
RawOutcome = tuple[str, str, Any, str]


def outcome_request(session_id: str, call_id: str, result: Any, error_code: str) -> Any:
    """The ``CompleteRequest`` for an upstream result (or a failure code when ``result`` is None)."""
    code, digest, size = error_code, "", 0
    if result is not None:
        try:
            size, digest = len(orjson.dumps(result)), tagged_sha256(canonical(result))
        except (TypeError, ValueError) as exc:  # a result JCS cannot express: report, don't drop
            code = f"unhashable-result:{type(exc).__name__}"
    return enclave_pb2.CompleteRequest(
        session_id=session_id,
        call_id=call_id,
        response_digest=digest,
        response_bytes=size,
        error_code=code,
        is_error=bool(result.get("isError")) if isinstance(result, dict) else False,
    )


@dataclass
class Endpoint:
    address: str
    channel: Any
    stub: enclave_pb2_grpc.EnclaveStub
    decisions: DecisionStream = field(init=False, repr=False)
    attested: AttestedEnclave | None = None
    error: CmcpError | None = None
    reattest: asyncio.Task[None] | None = field(default=None, repr=False)
    raw: list[RawOutcome] = field(default_factory=list, repr=False)  # digests not computed yet
    outcomes: list[Any] = field(default_factory=list, repr=False)  # CompleteRequests to carry
    prepare_armed: bool = field(default=False, repr=False)
    flush_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    flushing: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    carries: bool | None = field(default=None, repr=False)  # acknowledged carried outcomes?


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


def _outcome_lost(request: Any, code: Code) -> None:
    log.warning(
        "complete failed",
        extra={"call_id": request.call_id, "session_id": request.session_id, "code": str(code)},
    )


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),  # an idle stream still gets pinged
    ]


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
            channel = grpc.aio.insecure_channel(address, options=_channel_options())
            endpoint = Endpoint(address, channel, enclave_pb2_grpc.EnclaveStub(channel))
            endpoint.decisions = DecisionStream(
                endpoint.stub, functools.partial(self._suspect, endpoint), self.decide_timeout
            )
            self.endpoints[address] = endpoint
        await asyncio.gather(*(self._attest(self.endpoints[a]) for a in fresh))

    async def _drop(self, address: str) -> None:
        endpoint = self.endpoints.pop(address)
        if endpoint.reattest is not None:
            endpoint.reattest.cancel()
        if endpoint.flush_timer is not None:
            endpoint.flush_timer.cancel()
        await self._settle(endpoint)
        for request in self._take(endpoint, None):  # the enclave left the route: its sessions ended
            _outcome_lost(request, Code.SESSION_LOST)
        await endpoint.decisions.close()
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
    async def _rpc(self, endpoint: Endpoint, name: str, request: Any, *, suspect: bool = True) -> Any:
        """One call; ``suspect=False`` (background outcome flushes) leaves the endpoint's state to
        the agent-facing calls, which then fail with their own code."""
        timeout = self.decide_timeout
        try:
            return await getattr(endpoint.stub, name)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if suspect and exc.code() in _UNREACHABLE:
                self._suspect(endpoint)
            refused = _enclave_code(exc)
            if refused is not None:  # the enclave refused with a registered code: relay it (still closed)
                raise CmcpError(refused, f"enclave refused {name}: {exc.details()}") from exc
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave {name} exceeded {timeout}s") from exc
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave {name} failed: {exc.code().name}") from exc

    # --- outcomes -------------------------------------------------------------------------
    def report(self, pin: Pin, session_id: str, call_id: str, result: Any, error_code: str) -> None:
        """Queue an allowed call's outcome for the pinned enclave (cheap: digests come later)."""
        endpoint = self.endpoints.get(pin.address)
        if endpoint is None:
            log.warning(
                "complete failed",
                extra={"call_id": call_id, "session_id": session_id, "code": str(Code.SESSION_LOST)},
            )
            return
        endpoint.raw.append((session_id, call_id, result, error_code))
        if not endpoint.prepare_armed:
            endpoint.prepare_armed = True
            asyncio.get_running_loop().call_soon(self._prepare, endpoint)

    def _prepare(self, endpoint: Endpoint) -> None:
        """Compute queued outcomes' digests (after the answer went out) and arm the flush timer."""
        endpoint.prepare_armed = False
        if endpoint.raw:
            raw, endpoint.raw = endpoint.raw, []
            endpoint.outcomes.extend(outcome_request(*r) for r in raw)
        if endpoint.outcomes and endpoint.flush_timer is None:
            endpoint.flush_timer = asyncio.get_running_loop().call_later(
                OUTCOME_FLUSH_SECONDS, self._start_flush, endpoint
            )

    def _take(self, endpoint: Endpoint, limit: int | None = MAX_CARRIED) -> list[Any]:
        """Remove up to ``limit`` queued outcomes (oldest first) for a carrier to take along."""
        self._prepare(endpoint)
        if limit is None or len(endpoint.outcomes) <= limit:
            taken, endpoint.outcomes = endpoint.outcomes, []
        else:
            taken, endpoint.outcomes = endpoint.outcomes[:limit], endpoint.outcomes[limit:]
        if not endpoint.outcomes and endpoint.flush_timer is not None:
            endpoint.flush_timer.cancel()
            endpoint.flush_timer = None
        return taken

    def _requeue(self, endpoint: Endpoint, taken: list[Any]) -> None:
        """The carrier may not have arrived: send these again (the enclave refuses duplicates)."""
        if taken:
            endpoint.outcomes[:0] = taken
            self._prepare(endpoint)

    def _start_flush(self, endpoint: Endpoint) -> None:
        """Send what is queued now, each outcome as its own Complete (timer, close, shutdown)."""
        if endpoint.flush_timer is not None:
            endpoint.flush_timer.cancel()
            endpoint.flush_timer = None
        taken = self._take(endpoint, None)
        if taken:
            task = asyncio.get_running_loop().create_task(self._send_outcomes(endpoint, taken))
            endpoint.flushing.add(task)
            task.add_done_callback(endpoint.flushing.discard)

    async def _send_outcomes(self, endpoint: Endpoint, outcomes: list[Any]) -> None:
        """Each as its own Complete, concurrently (bounded by one timeout, as the old per-call tasks)."""

        async def one(request: Any) -> None:
            try:
                if self.endpoints.get(endpoint.address) is not endpoint:
                    raise CmcpError(Code.SESSION_LOST, "the enclave holding this session is gone")
                await self._rpc(endpoint, "Complete", request, suspect=False)
            except CmcpError as exc:
                _outcome_lost(request, exc.code)

        await asyncio.gather(*(one(r) for r in outcomes))

    def _acknowledged(self, endpoint: Endpoint, carried: list[Any], handled: int) -> None:
        """Did the enclave handle what rode along? If not (it predates ``completes``), resend alone."""
        if not carried:
            return
        if handled == len(carried):
            endpoint.carries = True
            return
        endpoint.carries = False
        log.warning("enclave does not take carried outcomes; sending them as Complete calls",
                    extra={"route": self.route_name, "endpoint": endpoint.address})
        self._requeue(endpoint, carried)

    async def _settle(self, endpoint: Endpoint) -> None:
        """Wait for this endpoint's in-flight outcome flushes."""
        while endpoint.flushing:
            await asyncio.gather(*list(endpoint.flushing), return_exceptions=True)

    async def flush(self) -> None:
        """Send every queued outcome now and wait for all of them (shutdown)."""
        for endpoint in list(self.endpoints.values()):
            self._start_flush(endpoint)
            await self._settle(endpoint)

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
        carried = self._take(endpoint) if endpoint.carries is not False else []
        if carried:
            request.completes.extend(carried)
        try:
            if request.ByteSize() > STREAM_MESSAGE_MAX:
                resp = await self._rpc(endpoint, "Decide", request)
            else:
                resp = await endpoint.decisions.decide(request)
        except CmcpError as exc:
            if exc.code is Code.TEE_UNAVAILABLE:  # not known to have arrived
                self._requeue(endpoint, carried)
            raise
        self._acknowledged(endpoint, carried, resp.completes_handled)
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
        """Close at the enclave, after every outcome queued so far is recorded (carried along)."""
        endpoint, _ = self.resolve(pin)
        if endpoint.carries is not True:  # not known to take them along: send them first
            self._start_flush(endpoint)
        await self._settle(endpoint)
        endpoint, _ = self.resolve(pin)
        request = enclave_pb2.CloseSessionRequest(session_id=session_id, reason=reason)
        carried = self._take(endpoint, None) if endpoint.carries is True else []
        if carried:
            request.completes.extend(carried)
        try:
            resp = await self._rpc(endpoint, "CloseSession", request)
        except CmcpError as exc:
            if exc.code is Code.TEE_UNAVAILABLE:
                self._requeue(endpoint, carried)
            raise
        if carried and resp.completes_handled != len(carried):  # cannot happen once acknowledged
            for lost in carried:
                _outcome_lost(lost, Code.SESSION_CLOSED)
        return resp

    async def close(self) -> None:
        await self.flush()
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
