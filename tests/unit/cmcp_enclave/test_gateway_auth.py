"""Only a gateway the initdata names may open, decide in, report on or close sessions.

A real grpc.aio server on an in-process enclave whose initdata pins one gateway key. The
attacker reaches the enclave's port: without a proof, with its own key, with the gateway's proof
for another enclave or another request, it is refused before any handler runs. A weakened
enclave (no interceptor, as with no key pinned) shows the same stranger closing a session.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.digest import json_digest
from cmcp_core.gateway_identity import METADATA_KEY, initdata_value, make_proof, proving
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, inprocess_enclave
from cmcp_enclave import gateway_auth
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import ERROR_METADATA_KEY, serve
from tests.paths import EXAMPLES

GATEWAY = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


class Live:
    def __init__(self, enclave: Enclave, port: int) -> None:
        self.enclave, self.address = enclave, f"127.0.0.1:{port}"

    def channel(self, key: Ed25519PrivateKey | None, enclave_kid: str | None = None) -> grpc.aio.Channel:
        interceptors = proving(key, lambda: enclave_kid or self.enclave.kid) if key is not None else None
        return grpc.aio.insecure_channel(self.address, interceptors=interceptors)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path, gateway_keys=[initdata_value(GATEWAY)])
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    try:
        yield Live(enclave, port)
    finally:
        await server.stop(None)


async def _open(stub: enclave_pb2_grpc.EnclaveStub, principal: str = "agent") -> str:
    first = enclave_pb2.OpenSessionRequest(principal=principal, trail=NO_TRAIL)
    return str((await stub.OpenSession(first)).session_id)


def _decide(session: str, principal: str = "agent") -> enclave_pb2.DecideRequest:
    args = {"customer_id": "c-1"}
    return enclave_pb2.DecideRequest(
        session_id=session, call_id=f"c-{os.urandom(4).hex()}", principal=principal, method="tools/call",
        tool="crm.lookup_customer", arguments_json=json.dumps(args).encode(),
        arguments_digest=json_digest(args), audience=DEFAULT_AUDIENCE)


async def _refused(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    return dict(err.value.trailing_metadata() or ())[ERROR_METADATA_KEY]


async def test_the_pinned_gateway_decides_and_closes(live: Live) -> None:
    async with live.channel(GATEWAY) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        session = await _open(stub)
        assert json.loads((await stub.Decide(_decide(session))).decision_json)["effective"] == "allow"
        record = await stub.CloseSession(enclave_pb2.CloseSessionRequest(session_id=session, reason="done"))
        assert record.trust_record_json


async def test_anyone_may_attest(live: Live) -> None:
    async with live.channel(None) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        response = await stub.Attest(enclave_pb2.AttestRequest(nonce=b"n" * 32))
        assert response.evidence


@pytest.mark.parametrize("who", ["no proof", "stranger's key", "proof for another enclave"])
async def test_a_stranger_cannot_close_anothers_session(live: Live, who: str) -> None:
    async with live.channel(GATEWAY) as gateway:
        session = await _open(enclave_pb2_grpc.EnclaveStub(gateway))
    key, kid = {"no proof": (None, None), "stranger's key": (STRANGER, None),
                "proof for another enclave": (GATEWAY, "another-enclave")}[who]
    async with live.channel(key, kid) as channel:
        close = enclave_pb2_grpc.EnclaveStub(channel).CloseSession(
            enclave_pb2.CloseSessionRequest(session_id=session, reason="stranger"))
        assert await _refused(close) == "GATEWAY_UNAUTHENTICATED"
    assert session in live.enclave.sessions  # still open: the handler never ran


async def test_a_proof_for_one_request_does_not_carry_another(live: Live) -> None:
    """A stranger who saw the gateway close one session replays that proof to close another."""
    async with live.channel(GATEWAY) as gateway:
        stub = enclave_pb2_grpc.EnclaveStub(gateway)
        mine, theirs = await _open(stub), await _open(stub, "other-agent")
    seen = make_proof(GATEWAY, rpc="CloseSession", enclave_kid=live.enclave.kid,
                      request=enclave_pb2.CloseSessionRequest(session_id=mine).SerializeToString(
                          deterministic=True),
                      now=live.enclave.clock())
    async with live.channel(None) as channel:
        close = enclave_pb2_grpc.EnclaveStub(channel).CloseSession(
            enclave_pb2.CloseSessionRequest(session_id=theirs), metadata=((METADATA_KEY, seen),))
        assert await _refused(close) == "GATEWAY_UNAUTHENTICATED"


async def test_a_stranger_cannot_open_a_decision_stream(live: Live) -> None:
    async with live.channel(GATEWAY) as gateway:
        session = await _open(enclave_pb2_grpc.EnclaveStub(gateway), "someone-else")
    before = live.enclave.audit_entries_total
    async with live.channel(STRANGER) as channel:
        stream = enclave_pb2_grpc.EnclaveStub(channel).DecideStream()
        await stream.write(_decide(session, principal="someone-else"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert live.enclave.audit_entries_total == before  # nothing decided


async def test_the_gateways_stream_decides(live: Live) -> None:
    async with live.channel(GATEWAY) as channel:
        session = await _open(enclave_pb2_grpc.EnclaveStub(channel))
        stream = enclave_pb2_grpc.EnclaveStub(channel).DecideStream()
        await stream.write(_decide(session))
        reply = await stream.read()
        await stream.done_writing()
        assert json.loads(reply.response.decision_json)["effective"] == "allow"


async def test_weakened_enclave_without_the_check_lets_a_stranger_close_the_session(
        live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_auth, "interceptors", lambda *args, **kwargs: [])
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "weak",
                                gateway_keys=[initdata_value(GATEWAY)])
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    try:
        weak = Live(enclave, port)
        async with weak.channel(GATEWAY) as gateway:
            session = await _open(enclave_pb2_grpc.EnclaveStub(gateway))
        async with weak.channel(STRANGER) as channel:
            await enclave_pb2_grpc.EnclaveStub(channel).CloseSession(
                enclave_pb2.CloseSessionRequest(session_id=session, reason="stranger"))
        assert session not in enclave.sessions  # the attack the interceptor stops
    finally:
        await server.stop(None)
