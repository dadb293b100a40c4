"""The gateway's gRPC link to one enclave: the channel, and unary calls that fail with a code.

Every failure becomes a registered ``CmcpError``: the enclave's own code when it refused with
one (in trailing metadata), ``TEE_UNAVAILABLE`` otherwise. ``Decide`` normally travels on the
long-lived stream instead (:mod:`cmcp_gateway.decide_stream`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from cmcp_core.errors import CmcpError, Code

ERROR_METADATA_KEY = "cmcp-error-code"  # trailing metadata the enclave's gRPC server sets on a refusal
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})
# The decision stream is long-lived and often idle: HTTP/2 keepalive pings (also without data
# frames) find a peer that vanished without a reset within ~40 s instead of TCP's minutes. The
# enclave accepts pings this often (cmcp_enclave.server.MIN_PING_INTERVAL_MS), so it never
# answers them with GOAWAY "too_many_pings".
KEEPALIVE_MS = 30_000


def open_channel(address: str, interceptors: Sequence[Any] | None = None) -> Any:
    return grpc.aio.insecure_channel(
        address,
        interceptors=interceptors,
        options=[
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),  # an idle stream still gets pinged
        ],
    )


def enclave_code(exc: grpc.aio.AioRpcError) -> Code | None:
    """The registered code an enclave put in its trailing metadata, if any (unknown codes: none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            try:
                return Code(value)
            except ValueError:
                return None
    return None


async def unary(
    stub: Any, name: str, request: Any, deadline: float, on_unreachable: Callable[[], None] | None
) -> Any:
    """One unary call within ``deadline`` seconds; ``on_unreachable`` runs when the enclave did
    not answer at all."""
    try:
        return await getattr(stub, name)(request, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        if on_unreachable is not None and exc.code() in UNREACHABLE:
            on_unreachable()
        refused = enclave_code(exc)
        if refused is not None:  # the enclave refused with a registered code: relay it (still closed)
            raise CmcpError(refused, f"enclave refused {name}: {exc.details()}") from exc
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave {name} exceeded {deadline}s") from exc
        raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave {name} failed: {exc.code().name}") from exc
