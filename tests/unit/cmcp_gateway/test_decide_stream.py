"""Decide over the long-lived ``DecideStream``: replies matched per call, refusals relayed with
their code without ending the stream, and every transport failure closed (``TEE_UNAVAILABLE``).

Real enclave (in process, real gRPC server); the hostile one is the tests' ``MitmEnclave``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.decide_frames import STREAM_MESSAGE_MAX
from cmcp_core.digest import json_digest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2_grpc
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import serve
from cmcp_gateway.decide_stream import DecisionStream
from cmcp_gateway.enclave_pool import EnclavePool
from tests.helpers.decide_requests import decide_request as request
from tests.helpers.gateway_stack import MitmEnclave, attest_policy, audit_writer
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "minimal"
DEADLINE = 5.0




@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Enclave, str]]:
    enclave = inprocess_enclave(BUNDLE, tmp_path)
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    try:
        yield enclave, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


class Broken:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_concurrent_decisions_each_get_their_own_reply(live: tuple[Enclave, str]) -> None:
    import grpc

    enclave, address = live
    broken = Broken()
    async with grpc.aio.insecure_channel(address) as channel:
        stream = DecisionStream(enclave_pb2_grpc.EnclaveStub(channel), broken, DEADLINE)
        asks = [request(enclave.open_session("agent", trail=NO_TRAIL), text=f"t{i}") for i in range(40)]
        answers = await asyncio.gather(*(stream.decide(r) for r in asks))
        for ask, answer in zip(asks, answers, strict=True):
            doc = json.loads(answer.decision_json)
            assert (doc["call_id"], doc["args_digest"]) == (ask.call_id, ask.arguments_digest)
            assert doc["effective"] == "allow" and answer.permit
        await stream.close()
    assert broken.count == 0


async def test_a_refusal_is_relayed_with_its_code_and_the_stream_goes_on(live: tuple[Enclave, str]) -> None:
    import grpc

    enclave, address = live
    async with grpc.aio.insecure_channel(address) as channel:
        stream = DecisionStream(enclave_pb2_grpc.EnclaveStub(channel), Broken(), DEADLINE)
        with pytest.raises(CmcpError) as refused:
            session_id = enclave.open_session("agent", trail=NO_TRAIL)
            await stream.decide(request(session_id, digest="sha256:" + "0" * 64))
        assert refused.value.code is Code.ARGS_DIGEST_MISMATCH
        call = stream._call
        answer = await stream.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))
        assert answer.permit and stream._call is call  # same stream, still deciding
        await stream.close()


async def test_no_reply_within_the_deadline_is_tee_unavailable(live: tuple[Enclave, str]) -> None:
    enclave, address = live
    mitm = await MitmEnclave(address, tamper="slow", delay=30.0).start()
    try:
        import grpc

        async with grpc.aio.insecure_channel(mitm.address) as channel:
            stream = DecisionStream(enclave_pb2_grpc.EnclaveStub(channel), Broken(), 0.3)
            with pytest.raises(CmcpError) as late:
                await stream.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))
            assert late.value.code is Code.TEE_UNAVAILABLE and "exceeded" in late.value.detail
            assert stream._waiting == {}
            await stream.close()
    finally:
        await mitm.stop()


async def test_a_broken_stream_fails_every_waiting_call_and_reopens(live: tuple[Enclave, str]) -> None:
    enclave, address = live
    mitm = await MitmEnclave(address, tamper="slow", delay=30.0).start()
    broken = Broken()
    import grpc

    async with grpc.aio.insecure_channel(mitm.address) as channel:
        stream = DecisionStream(enclave_pb2_grpc.EnclaveStub(channel), broken, DEADLINE)
        sessions = [enclave.open_session("agent", trail=NO_TRAIL) for _ in range(3)]
        waiting = [asyncio.ensure_future(stream.decide(request(session_id))) for session_id in sessions]
        await asyncio.wait_for(mitm.decide_seen.wait(), 5.0)
        await mitm.stop()  # the enclave's end goes away mid-decision
        for task in waiting:
            with pytest.raises(CmcpError) as lost:
                await task
            assert lost.value.code is Code.TEE_UNAVAILABLE and "broke" in lost.value.detail
        assert broken.count == 1 and stream._call is None
        await stream.close()
    # The next decision opens a fresh stream (here to the real enclave directly).
    async with grpc.aio.insecure_channel(address) as channel:
        stream._stub = enclave_pb2_grpc.EnclaveStub(channel)
        assert (await stream.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))).permit
        await stream.close()


async def test_an_oversized_request_goes_unary_and_leaves_the_stream_alone(
        live: tuple[Enclave, str], tmp_path: Path) -> None:
    enclave, address = live
    pool = EnclavePool("stream", attest_policy(enclave.bundle_hash), 5.0, audit_writer(tmp_path))
    await pool.set_endpoints([address])
    try:
        pin = await pool.pick("agent")
        session_id = await pool.open_session(pin, "agent")
        endpoint = pool.endpoints[address]

        async def decide(text: str) -> Any:
            args = {"text": text}
            return await pool.decide(
                pin, session_id=session_id, call_id=uuid.uuid4().hex, principal="agent",
                method="tools/call", tool="echo", arguments_json=json.dumps(args).encode(),
                args_digest=json_digest(args), audience=DEFAULT_AUDIENCE)

        assert (await decide("small")).permit
        call = endpoint.decisions._call
        assert call is not None
        with pytest.raises(CmcpError) as big:
            await decide("x" * (STREAM_MESSAGE_MAX + 1))
        assert big.value.code is Code.ARGS_TOO_LARGE  # the enclave's own refusal, over a unary call
        assert endpoint.decisions._call is call and endpoint.attested is not None
        assert (await decide("small again")).permit
    finally:
        await pool.close()


async def test_an_idle_stream_survives_keepalive_pings(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway pings its idle stream; the enclave must accept that, not end it (GOAWAY
    too_many_pings would fail the next calls and mark the enclave unattested)."""
    from cmcp_enclave import server as enclave_server
    from cmcp_gateway import enclave_rpc

    monkeypatch.setattr(enclave_rpc, "KEEPALIVE_MS", 200)  # gRPC then pings about once a second
    monkeypatch.setattr(enclave_server, "MIN_PING_INTERVAL_MS", 100)
    enclave = inprocess_enclave(BUNDLE, tmp_path)
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    pool = EnclavePool("keepalive", attest_policy(enclave.bundle_hash), 5.0, audit_writer(tmp_path))
    address = f"127.0.0.1:{port}"
    await pool.set_endpoints([address])
    try:
        pin = await pool.pick("agent")
        session_id = await pool.open_session(pin, "agent")
        args = {"text": "hi"}

        async def decide() -> Any:
            return await pool.decide(
                pin, session_id=session_id, call_id=uuid.uuid4().hex, principal="agent",
                method="tools/call", tool="echo", arguments_json=json.dumps(args).encode(),
                args_digest=json_digest(args), audience=DEFAULT_AUDIENCE)

        assert (await decide()).permit
        stream = pool.endpoints[address].decisions
        call = stream._call
        await asyncio.sleep(6.0)  # pings about once a second: past the default strike limit
        assert stream._call is call and pool.endpoints[address].attested is not None
        assert (await decide()).permit
    finally:
        await pool.close()
        await server.stop(0)
