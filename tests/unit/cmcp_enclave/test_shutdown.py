"""The enclave's graceful stop on a real grpc.aio server: no new session, every open one closed
with its Trust Record, and the server kept up until the gateway took the close entries (or the
grace ran out, which is then counted)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from cmcp_core.errors import Code
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.trust_record import subject_for
from cmcp_devkit.enclave import NO_TRAIL, inprocess_enclave
from cmcp_enclave.judging import RequestError
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import serve
from cmcp_enclave.shutdown import shut_down
from tests.paths import EXAMPLES


async def test_a_stop_closes_sessions_and_waits_for_the_gateway_to_take_their_entries(tmp_path: Path) -> None:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        opened = await stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent", trail=NO_TRAIL))
        stopping = asyncio.create_task(shut_down(enclave, server, grace=300.0))
        await asyncio.sleep(0)  # the stop runs up to its wait for the outbox
        assert enclave.stopping
        assert not enclave.sessions and not stopping.done()  # closed, and still serving
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent"))
        assert (refused.value.details() or "").startswith(Code.TEE_UNAVAILABLE.value)
        closed = await stub.CloseSession(enclave_pb2.CloseSessionRequest(session_id=opened.session_id))
        record = json.loads(closed.trust_record_json)
        assert record["subject"] == subject_for(enclave.entry.route, opened.session_id)
        reasons = [json.loads(e)["data"].get("reason") for e in closed.audit_entries]
        assert "shutdown" in reasons
        stopped = await stopping  # the outbox is empty: no waiting out the grace
    assert (stopped.sessions_closed, stopped.audit_entries_undelivered) == (1, 0)


async def test_entries_nobody_took_are_counted_once_the_grace_ran_out(tmp_path: Path) -> None:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    server, _ = await serve(enclave, "127.0.0.1:0", Metrics())
    enclave.open_session("agent", trail=NO_TRAIL)
    enclave.take_audit()  # the open's entries left with their answer
    stopped = await shut_down(enclave, server, grace=0.0)
    assert stopped.sessions_closed == 1
    assert stopped.audit_entries_undelivered == len(enclave.outbox) == 2  # the session's close, the ledger's


def test_a_stopping_enclave_opens_no_session(tmp_path: Path) -> None:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    enclave.stop_accepting()
    with pytest.raises(RequestError) as refused:
        enclave.open_session("agent", trail=NO_TRAIL)
    assert refused.value.code is Code.TEE_UNAVAILABLE
    assert not enclave.sessions
