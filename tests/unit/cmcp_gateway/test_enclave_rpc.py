"""The gateway's unary gRPC calls to an enclave fail with a code: the enclave's own, or TEE_UNAVAILABLE."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.ports import free_port
from cmcp_gateway.enclave_rpc import ERROR_METADATA_KEY, open_channel, unary


class Refusing:
    """A stub whose one method fails the way grpc.aio does, with optional trailing metadata."""

    def __init__(self, status: grpc.StatusCode, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.status, self.metadata = status, metadata

    async def Close(self, request: Any, timeout: float) -> Any:  # noqa: ASYNC109 - the gRPC stub signature
        raise grpc.aio.AioRpcError(self.status, grpc.aio.Metadata(), grpc.aio.Metadata(*self.metadata),
                                   details="refused")


async def _code(stub: Any, unreachable: list[bool]) -> Code:
    with pytest.raises(CmcpError) as err:
        await unary(stub, "Close", object(), 1.0, lambda: unreachable.append(True))
    return err.value.code


async def test_the_enclaves_own_code_is_relayed() -> None:
    seen: list[bool] = []
    stub = Refusing(grpc.StatusCode.FAILED_PRECONDITION, ((ERROR_METADATA_KEY, "SESSION_CLOSED"),))
    assert await _code(stub, seen) is Code.SESSION_CLOSED and seen == []


async def test_an_unknown_code_or_none_is_tee_unavailable() -> None:
    seen: list[bool] = []
    forged = Refusing(grpc.StatusCode.FAILED_PRECONDITION, ((ERROR_METADATA_KEY, "ALLOW_EVERYTHING"),))
    assert await _code(forged, seen) is Code.TEE_UNAVAILABLE
    assert await _code(Refusing(grpc.StatusCode.DEADLINE_EXCEEDED), seen) is Code.TEE_UNAVAILABLE
    assert seen == []  # neither means the enclave is gone


async def test_an_unreachable_enclave_is_reported_to_the_caller() -> None:
    seen: list[bool] = []
    channel = open_channel(f"127.0.0.1:{free_port()}")
    try:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        with pytest.raises(CmcpError) as err:
            await unary(stub, "Attest", enclave_pb2.AttestRequest(nonce=bytes(32)), 1.0,
                        lambda: seen.append(True))
        assert err.value.code is Code.TEE_UNAVAILABLE and seen == [True]
    finally:
        await channel.close()
