"""gRPC front of the enclave (``cmcp.enclave.v1.Enclave`` + standard health), on grpc.aio.

A request the enclave will not decide on gets a gRPC error whose details start with the
registered code (``"ARGS_DIGEST_MISMATCH: ..."``) and whose trailing metadata carries
``cmcp-error-code``; it never gets a decision. Message sizes are capped on both directions.
Every answer carries the audit entries produced since the last one (``audit_entries``), its own
call's always included, as one delivery the gateway acknowledges once stored (``audit_acks``):
the enclave keeps none past that (:mod:`cmcp_enclave.outbox`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from cmcp_core import decide_frames
from cmcp_core.digest import jcs
from cmcp_core.errors import CmcpError, Code
from cmcp_core.gateway_identity import trusted_keys
from cmcp_core.mcp_target import LIST_METHODS
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_enclave import decide_hop, gateway_auth
from cmcp_enclave.enclave import Enclave, UpstreamOutcome
from cmcp_enclave.judging import RequestError
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.outbox import Delivery
from cmcp_enclave.scheduler import DecisionScheduler

MAX_MESSAGE_BYTES = 1024 * 1024
# Gateways keep a DecideStream open and ping it every 30 s even when idle (keepalive); accept
# pings that often, or gRPC would count them as abuse and end the stream with GOAWAY.
MIN_PING_INTERVAL_MS = 10_000
MAX_IN_FLIGHT_PER_STREAM = decide_frames.MAX_IN_FLIGHT  # a gateway connection's decisions in progress at once
SERVICE_NAME = "cmcp.enclave.v1.Enclave"
ERROR_METADATA_KEY = "cmcp-error-code"

_STATUS = {
    Code.MCP_INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Code.ARGS_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Code.ARGS_DIGEST_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    Code.VERIFY_INPUT_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Code.SESSION_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Code.SESSION_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    Code.SESSION_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.PRINCIPAL_BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DECISION_WORKER_FAILED: grpc.StatusCode.INTERNAL,  # not UNAVAILABLE: the enclave itself answers
    Code.ARGS_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Code.SESSION_PRINCIPAL_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    Code.RESET_UNAUTHORIZED: grpc.StatusCode.PERMISSION_DENIED,
    Code.AUDIT_OUTBOX_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.PRINCIPAL_STATE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.TEE_PROVIDER_FAILED: grpc.StatusCode.UNAVAILABLE,
    Code.IDENTITY_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    **{code: grpc.StatusCode.UNAUTHENTICATED for code in Code if code.value.startswith("TOKEN_")},
}


def attest_response(enclave: Enclave, nonce: bytes, decide_hop_port: int = 0) -> Any:
    """The ``AttestResponse`` for ``nonce``: fresh evidence plus what it claims to bind, and the
    lean decision hop's port when this enclave serves one (:mod:`cmcp_enclave.decide_hop`)."""
    report, report_data = enclave.attest(nonce)
    return enclave_pb2.AttestResponse(
        platform=report.platform, evidence=report.evidence, aux=report.aux,
        initdata=enclave.initdata_bytes, public_key_jwk=json.dumps(enclave.public_jwk),
        bundle_hash=enclave.bundle_hash, catalog_hash=enclave.catalog_hash,
        enforcement_mode=enclave.mode, report_data=report_data, decide_hop_port=decide_hop_port,
        decide_hop_version=decide_frames.VERSION if decide_hop_port else 0,
        gpu_evidence=list(report.gpu_evidence))


def _carrying(response: Any, delivery: Delivery) -> Any:
    """``response`` with one delivery's entries and the id the gateway acknowledges them by: the
    two always travel together, or entries would come again forever (ADR 0033)."""
    response.audit_entries.extend(delivery.entries)
    response.audit_delivery = delivery.id
    return response


class EnclaveService(enclave_pb2_grpc.EnclaveServicer):  # type: ignore[misc]
    def __init__(self, enclave: Enclave, metrics: Metrics, scheduler: DecisionScheduler | None = None):
        self.enclave = enclave
        self.metrics = metrics
        self.scheduler = scheduler or DecisionScheduler(enclave)
        self.decide_hop_port = 0  # advertised in Attest once the hop listens
        enclave.on_refused_outcome = self._outcome_refused

    def _outcome_refused(self, code: Code) -> None:
        self.metrics.request_errors.labels("Complete", code.value).inc()

    async def _refuse(self, context: grpc.aio.ServicerContext, rpc: str, exc: CmcpError) -> None:
        self.metrics.request_errors.labels(rpc, exc.code.value).inc()
        context.set_trailing_metadata(((ERROR_METADATA_KEY, exc.code.value),))
        await context.abort(_STATUS.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT),
                            f"{exc.code.value}: {exc.detail}")

    async def Attest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = attest_response(self.enclave, bytes(request.nonce), self.decide_hop_port)
        except CmcpError as exc:
            self.metrics.attest_requests.labels("refused").inc()
            await self._refuse(context, "Attest", exc)
            raise  # unreachable: abort raises
        self.metrics.attest_requests.labels("ok").inc()
        return response

    async def OpenSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.enclave.acknowledge_audit(request.audit_acks)
        mark = self.enclave.audit_mark()
        try:
            session_id = self.enclave.open_session(
                request.principal, trail=request.trail if request.HasField("trail") else None,
                access_token=request.access_token)
        except RequestError as exc:
            await self._refuse(context, "OpenSession", exc)
            raise
        self._gauges()
        response = enclave_pb2.OpenSessionResponse(session_id=session_id)
        return _carrying(response, self.enclave.take_audit(mark))

    async def Authenticate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            identity = self.enclave.authenticate(request.access_token)
        except RequestError as exc:
            await self._refuse(context, "Authenticate", exc)
            raise
        return enclave_pb2.AuthenticateResponse(principal=identity.principal,
                                                expires_at=int(identity.expires_at),
                                                scopes=sorted(identity.scopes))

    async def DrainAudit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.enclave.acknowledge_audit(request.audit_acks)
        return _carrying(enclave_pb2.DrainAuditResponse(), self.enclave.take_audit())

    def _carry(self, completes: Any) -> int:
        """Queue outcomes riding on a Decide / CloseSession; the enclave records them (as Complete
        calls would be) before it handles anything else. A refused one is counted under
        ``Complete`` and skipped; it never fails the carrier. Returns how many were taken."""
        self.enclave.complete_later([
            UpstreamOutcome(c.session_id, c.call_id, c.response_digest, c.response_bytes,
                            c.error_code, c.is_error)
            for c in completes])
        return len(completes)

    async def _decide(self, request: Any) -> Any:
        """One decision, scheduled fairly, with the audit entries to carry; ``RequestError`` when
        the enclave refuses. The entries are taken right after the decision commits, with no
        await in between, so they include this decision's own."""
        started = time.perf_counter()
        self.enclave.acknowledge_audit(request.audit_acks)
        mark = self.enclave.audit_mark()
        result = await self.scheduler.decide(
            session_id=request.session_id, call_id=request.call_id, principal=request.principal,
            method=request.method, tool=request.tool, arguments_json=bytes(request.arguments_json),
            arguments_digest=request.arguments_digest, audience=request.audience,
            access_token=request.access_token, input_json=bytes(request.input_json))
        doc = result.document
        self.metrics.decisions.labels(doc["decision"], doc["effective"], doc["mode"]).inc()
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self._gauges()
        response = enclave_pb2.DecideResponse(decision_json=result.decision_json, signature=result.signature,
                                              permit=result.permit)
        return _carrying(response, self.enclave.take_audit(mark))

    async def Decide(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        handled = self._carry(request.completes) if request.completes else 0  # recorded first
        try:
            response = await self._decide(request)
        except RequestError as exc:
            await self._refuse(context, "Decide", exc)
            raise
        response.completes_handled = handled
        return response

    async def _reply(self, request: Any) -> Any:
        """A stream message's reply: the decision, or the refusal's code (the stream goes on).
        Carried outcomes are recorded before the decision, so their entries travel (and are
        stored) with it: no decision runs ahead of an earlier call's outcome."""
        handled = self._carry(request.completes) if request.completes else 0
        try:
            response = await self._decide(request)
        except RequestError as exc:
            self.metrics.request_errors.labels("DecideStream", exc.code.value).inc()
            return enclave_pb2.DecideReply(call_id=request.call_id, error_code=exc.code.value,
                                           error_detail=exc.detail)
        response.completes_handled = handled
        return enclave_pb2.DecideReply(call_id=request.call_id, response=response)

    async def DecideStream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        """Decisions over one long-lived gRPC stream (:meth:`answer_stream`)."""
        writing = asyncio.Lock()

        async def write(reply: Any) -> None:
            async with writing:
                await context.write(reply)

        await self.answer_stream(requests, write)

    async def answer_stream(self, requests: AsyncIterator[Any],
                            write: Callable[[Any], Awaitable[None]]) -> None:
        """Decide each request of one gateway connection as it arrives (the gRPC ``DecideStream``
        and the lean hop, :mod:`cmcp_enclave.decide_hop`, both come here): a call that is quick to
        decide (small arguments, its principal idle) is decided and answered right away; any other
        waits for its principal's turn or a decision worker in a task of its own, so a slow
        decision of one principal does not hold up another's (:mod:`cmcp_enclave.scheduler` keeps
        each principal's in order). At most ``MAX_IN_FLIGHT_PER_STREAM`` wait at once; beyond
        that the next request is not taken until one finishes. Replies go out through ``write``
        as decisions finish, each naming its call_id; a refusal is a reply, not the stream's end.
        Carried outcomes are recorded before the decision that carries them (:meth:`_reply`).
        """
        slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_STREAM)
        answering: set[asyncio.Task[None]] = set()

        async def send(reply: Any) -> None:
            await write(reply)
            self.enclave.settle()

        async def answer(request: Any) -> None:
            try:
                await send(await self._reply(request))
            finally:
                slots.release()

        try:
            async for request in requests:
                if self.scheduler.decides_at_once(request.principal,
                                                  len(request.arguments_json) + len(request.input_json)):
                    await send(await self._reply(request))
                    continue
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(answer(request))
                answering.add(task)
                task.add_done_callback(answering.discard)
            if answering:
                await asyncio.gather(*answering)
        finally:
            for task in list(answering):
                task.cancel()
            self.enclave.settle()

    async def Complete(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        mark = self.enclave.audit_mark()
        try:
            entry_hash = self.enclave.complete(
                session_id=request.session_id, call_id=request.call_id,
                response_digest=request.response_digest, response_bytes=request.response_bytes,
                error_code=request.error_code, is_error=request.is_error)
        except RequestError as exc:
            await self._refuse(context, "Complete", exc)
            raise
        self._gauges()
        return _carrying(enclave_pb2.CompleteResponse(entry_hash=entry_hash), self.enclave.take_audit(mark))

    async def ListTools(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            method = request.method or "tools/list"
            tools = self.enclave.list_tools(session_id=request.session_id, principal=request.principal,
                                            access_token=request.access_token, method=method)
        except RequestError as exc:
            await self._refuse(context, "ListTools", exc)
            raise
        entries, kind = self.enclave.engine.entries, LIST_METHODS[method][0]
        self._gauges()
        return enclave_pb2.ListToolsResponse(tools=tools, catalog_json=jcs([entries[kind, t] for t in tools]))

    async def CloseSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.enclave.acknowledge_audit(request.audit_acks)
        mark = self.enclave.audit_mark()
        handled = self._carry(request.completes) if request.completes else 0  # recorded first
        try:
            done = self.enclave.close(request.session_id, request.reason or "closed")
        except RequestError as exc:
            await self._refuse(context, "CloseSession", exc)
            raise
        self.metrics.sessions_closed.labels("request").inc()
        self._gauges()
        response = enclave_pb2.CloseSessionResponse(trust_record_json=jcs(done.record), chain_tip=done.tip,
                                                    entries=done.entries, completes_handled=handled,
                                                    gpu_evidence=list(done.gpu_evidence))
        return _carrying(response, self.enclave.take_audit(mark))

    async def ResetSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        mark = self.enclave.audit_mark()
        try:
            entry_hash = self.enclave.reset(session_id=request.session_id, actor=request.actor,
                                            reason=request.reason,
                                            signature=bytes(request.operator_signature))
        except RequestError as exc:
            await self._refuse(context, "ResetSession", exc)
            raise
        self._gauges()
        response = enclave_pb2.ResetSessionResponse(entry_hash=entry_hash)
        return _carrying(response, self.enclave.take_audit(mark))

    def _gauges(self) -> None:
        self.metrics.active_sessions.set(len(self.enclave.sessions))


def audit_counter(metrics: Metrics) -> Callable[[dict[str, Any]], None]:
    """The enclave's ``on_audit`` hook: counts entries, never sees their content."""
    def hook(_entry: dict[str, Any]) -> None:
        metrics.audit_entries.inc()
    return hook


class EnclaveServer:
    """The gRPC server and, when asked for, the lean decision hop: stopped together."""

    def __init__(self, grpc_server: grpc.aio.Server, hop: decide_hop.DecideHop | None) -> None:
        self.grpc_server = grpc_server
        self.hop = hop

    async def stop(self, grace: float | None) -> None:
        if self.hop is not None:
            await self.hop.close()
        await self.grpc_server.stop(grace)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def serve(enclave: Enclave, listen: str, metrics: Metrics,
                scheduler: DecisionScheduler | None = None, *,
                decide_listen: str | None = None) -> tuple[EnclaveServer, int]:
    """Bind and start; returns the server and the bound gRPC port (``:0`` picks a free one).
    Decisions go through ``scheduler`` (default: a worker per CPU this process may use).
    ``decide_listen`` (``HOST:PORT``) also serves the lean decision hop there and advertises its
    port in ``Attest``."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
               ("grpc.keepalive_permit_without_calls", 1)]
    refused = metrics.request_errors
    trusted = trusted_keys(enclave.entry.gateway_keys)
    server = grpc.aio.server(options=options, interceptors=gateway_auth.interceptors(
        trusted, enclave.kid,
        on_refused=lambda rpc: refused.labels(rpc, Code.GATEWAY_UNAUTHENTICATED.value).inc()))
    service = EnclaveService(enclave, metrics, scheduler)
    hop = None
    if decide_listen:
        hop = await decide_hop.listen(decide_listen, service.answer_stream, trusted, enclave.kid,
                                      MAX_IN_FLIGHT_PER_STREAM,
                                      on_refused=lambda code: refused.labels("DecideHop", code.value).inc())
        service.decide_hop_port = hop.port
    enclave_pb2_grpc.add_EnclaveServicer_to_server(service, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        if hop is not None:
            await hop.close()
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return EnclaveServer(server, hop), port


async def expiry_loop(enclave: Enclave, metrics: Metrics, interval: float) -> None:
    """Close idle sessions periodically; their close entries leave with the next answer or drain."""
    while True:
        await asyncio.sleep(interval)
        expired = enclave.expire_idle()
        if expired:
            metrics.sessions_closed.labels("idle").inc(len(expired))
            metrics.active_sessions.set(len(enclave.sessions))
