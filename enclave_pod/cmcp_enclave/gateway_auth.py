"""Only the gateways the measured initdata names may change the enclave's state.

A gRPC server interceptor: every method but attestation and health needs a gateway proof
(:mod:`cmcp_core.gateway_identity`) in its metadata, bound to this enclave's key id and, for a
unary call, to the exact request. A method added later is covered without being listed: only
:data:`OPEN_METHODS` go without. A refusal is ``GATEWAY_UNAUTHENTICATED`` (gRPC
``PERMISSION_DENIED``, the code in trailing metadata as for every refusal); the call's handler
never runs.

With no gateway key in the initdata there is nobody to accept, so the enclave would refuse every
session: that initdata is a development set-up, and :func:`interceptors` returns none for it
(the enclave logs that it takes state-changing calls from any caller). The operator and the dev
kit always pin a gateway key.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.errors import CmcpError
from cmcp_core.gateway_identity import METADATA_KEY, check_proof

ERROR_METADATA_KEY = "cmcp-error-code"
OPEN_METHODS = frozenset({
    "/cmcp.enclave.v1.Enclave/Attest",  # anyone may ask for evidence: it proves, it changes nothing
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
})


class GatewayAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], enclave_kid: str,
                 clock: Callable[[], float] = time.time,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.trusted = dict(trusted)
        self.enclave_kid = enclave_kid
        self.clock = clock
        self.on_refused = on_refused

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        rpc = details.method.rsplit("/", 1)[-1]
        proof = next((str(v) for k, v in (details.invocation_metadata or ()) if k == METADATA_KEY), None)

        async def refuse(context: grpc.aio.ServicerContext, exc: CmcpError) -> None:
            if self.on_refused is not None:
                self.on_refused(rpc)
            context.set_trailing_metadata(((ERROR_METADATA_KEY, exc.code.value),))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{exc.code.value}: {exc.detail}")

        def check(request: bytes) -> None:
            check_proof(proof, self.trusted, rpc=rpc, enclave_kid=self.enclave_kid, request=request,
                        now=self.clock())

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    check(request.SerializeToString(deterministic=True))
                except CmcpError as exc:
                    await refuse(context, exc)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    check(request.SerializeToString(deterministic=True))
                except CmcpError as exc:
                    await refuse(context, exc)
                async for reply in inner_us(request, context):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream
            if inspect.isasyncgenfunction(inner_ss):
                async def stream_gen(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    try:
                        check(b"")
                    except CmcpError as exc:
                        await refuse(context, exc)
                    async for reply in inner_ss(requests, context):
                        yield reply
                stream_stream: Any = stream_gen
            else:
                async def stream_coro(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                    try:
                        check(b"")  # a stream's proof is made when it opens: see cmcp_core.gateway_identity
                    except CmcpError as exc:
                        await refuse(context, exc)
                    return await inner_ss(requests, context)
                stream_stream = stream_coro
            return grpc.stream_stream_rpc_method_handler(
                stream_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # stream-unary: the enclave has none; nothing to wrap


def interceptors(trusted: Mapping[str, Ed25519PublicKey], enclave_kid: str,
                 on_refused: Callable[[str], None] | None = None) -> list[GatewayAuth]:
    """The interceptor for these keys, or none when the initdata names no gateway (development)."""
    return [GatewayAuth(trusted, enclave_kid, on_refused=on_refused)] if trusted else []
