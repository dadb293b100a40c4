"""The gRPC surface on a real grpc.aio server: size limits, malformed requests get gRPC errors
(never decisions), health, signed decisions and permits over the wire, metrics."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cmcp_core import session_id as session_ids
from cmcp_core.decision import verify_decision
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.scheduler import DecisionScheduler
from cmcp_enclave.server import ERROR_METADATA_KEY, MAX_MESSAGE_BYTES, SERVICE_NAME, expiry_loop, serve
from tests.helpers.held_cedar import BIG_ARGUMENTS, HELD_TOOL, HeldCedar, held
from tests.paths import EXAMPLES

__all__ = ["held"]  # the fixture


class Live:
    def __init__(self, enclave: Enclave, stub: enclave_pb2_grpc.EnclaveStub, channel: grpc.aio.Channel,
                 metrics: Metrics, scheduler: DecisionScheduler):
        self.enclave, self.stub, self.channel, self.metrics = enclave, stub, channel, metrics
        self.scheduler = scheduler


_SESSION = {"id": ""}  # the session _req names: opened over gRPC by each test's enclave


async def _open(stub: enclave_pb2_grpc.EnclaveStub, principal: str = "agent") -> str:
    opened = await stub.OpenSession(enclave_pb2.OpenSessionRequest(principal=principal, trail=NO_TRAIL))
    _SESSION["id"] = opened.session_id
    return str(opened.session_id)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    metrics = Metrics()
    scheduler = DecisionScheduler(enclave, workers=2, processes=False)
    server, port = await serve(enclave, "127.0.0.1:0", metrics, scheduler)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)])
    try:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        await _open(stub)
        yield Live(enclave, stub, channel, metrics, scheduler)
    finally:
        await channel.close()
        await server.stop(None)


def _req(tool_name: str, args: dict[str, object], **over: object) -> enclave_pb2.DecideRequest:
    fields: dict[str, object] = {
        "session_id": _SESSION["id"], "call_id": f"c-{os.urandom(4).hex()}", "principal": "agent",
        "method": "tools/call",
        "tool": tool_name, "arguments_json": json.dumps(args).encode(), "arguments_digest": json_digest(args),
        "audience": DEFAULT_AUDIENCE}
    fields.update(over)
    return enclave_pb2.DecideRequest(**fields)


async def test_health_serving(live: Live) -> None:
    health = health_pb2_grpc.HealthStub(live.channel)
    for service in ("", SERVICE_NAME):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_decide_over_grpc_is_signed(live: Live) -> None:
    resp = await live.stub.Decide(_req("web.search", {"query": "q"}))
    doc = verify_decision(resp.decision_json, resp.signature, live.enclave.public_key)
    assert doc["effective"] == "allow" and resp.permit.startswith("v1.")
    denied = await live.stub.Decide(_req("shell.exec", {}))
    assert json.loads(denied.decision_json)["reason_code"] == "TOOL_NOT_IN_CATALOG" and not denied.permit


@pytest.mark.parametrize("bad", [
    {"arguments_digest": "sha256:" + "0" * 64},
    {"arguments_json": b"{oops", "arguments_digest": "x"},
    {"session_id": ""},
    {"tool": "t" * 10_000},
    {"principal": "evil\nagent"},
])
async def test_malformed_requests_get_grpc_errors_not_decisions(live: Live, bad: dict[str, object]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.Decide(_req("web.search", {"query": "q"}, **bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    codes = dict(err.value.trailing_metadata() or ())
    assert codes.get(ERROR_METADATA_KEY) in ("ARGS_DIGEST_MISMATCH", "ARGS_INVALID", "MCP_INVALID_REQUEST")
    assert live.enclave.audit_entries_total == 3  # the ledger's adopt and open, the session's open


async def test_oversized_message_is_rejected_by_grpc(live: Live) -> None:
    big = {"body": "x" * (MAX_MESSAGE_BYTES + 10)}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.Decide(_req("slack.post_internal", big))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert live.enclave.audit_entries_total == 3  # the ledger's adopt and open, the session's open


async def test_attest_close_export_over_grpc(live: Live) -> None:
    resp = await live.stub.Attest(enclave_pb2.AttestRequest(nonce=os.urandom(32)))
    assert resp.platform == "simulated" and len(resp.report_data) == 64
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.Attest(enclave_pb2.AttestRequest(nonce=b"x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await live.stub.Decide(_req("web.search", {"query": "q"}))
    closed = await live.stub.CloseSession(enclave_pb2.CloseSessionRequest(session_id=_SESSION["id"]))
    assert closed.entries == 3
    assert json.loads(closed.trust_record_json)["tool_transcript"]["hash"] == closed.chain_tip
    entries = [json.loads(raw) for raw in closed.audit_entries]  # the close's own entries leave with it
    assert [(e["session_id"], e["kind"]) for e in entries] == [
        (_SESSION["id"], "close"), (live.enclave.ledger_id, "close")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.Decide(_req("web.search", {"query": "q"}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.CloseSession(enclave_pb2.CloseSessionRequest(session_id="never"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_metrics_count_decisions(live: Live) -> None:
    from prometheus_client import generate_latest

    await live.stub.Decide(_req("web.search", {"query": "q"}))
    await live.stub.Decide(_req("shell.exec", {}))
    text = generate_latest(live.metrics.registry).decode()
    assert 'cmcp_enclave_decisions_total{decision="allow",effective="allow",mode="enforce"} 1.0' in text
    assert 'cmcp_enclave_decisions_total{decision="deny",effective="deny",mode="enforce"} 1.0' in text
    assert "cmcp_enclave_decision_seconds_count 2.0" in text
    assert "cmcp_enclave_active_sessions 1.0" in text


async def test_expiry_loop_closes_idle_sessions(live: Live) -> None:
    await live.stub.Decide(_req("web.search", {"query": "q"}))
    live.enclave.limits.idle_timeout = 60
    now = live.enclave.clock() + 3600  # an hour later: the session is idle
    live.enclave.clock = lambda: now
    task = asyncio.create_task(expiry_loop(live.enclave, live.metrics, 0.01))
    try:
        for _ in range(500):  # bounded wait for the effect, not a timing assertion
            if not live.enclave.sessions:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert not live.enclave.sessions and _SESSION["id"] in live.enclave.closed
    from prometheus_client import generate_latest

    text = generate_latest(live.metrics.registry).decode()
    assert 'cmcp_enclave_sessions_closed_total{reason="idle"} 1.0' in text


async def test_reset_and_list_tools_over_grpc(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cmcp_core.audit import reset_payload

    operator = Ed25519PrivateKey.generate()
    enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path, operator_keys=[operator.public_key()])
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            session = await _open(stub)
            await stub.Decide(_req("ehr.read_patient_record", {"patient_id": "p"}))
            listed = await stub.ListTools(enclave_pb2.ListToolsRequest(session_id=session, principal="agent"))
            assert "email.send_external" in listed.tools
            assert {e["tool_name"] for e in json.loads(listed.catalog_json)} == set(listed.tools)
            seq = enclave.sessions[session].seq
            payload = reset_payload(session_id=session, actor="op", reason="r", seq=seq)
            bad = Ed25519PrivateKey.generate().sign(payload)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ResetSession(enclave_pb2.ResetSessionRequest(
                    session_id=session, actor="op", reason="r", operator_signature=bad))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            good = operator.sign(payload)
            resp = await stub.ResetSession(enclave_pb2.ResetSessionRequest(
                session_id=session, actor="op", reason="r", operator_signature=good))
            assert resp.entry_hash == enclave.sessions[session].tip
            assert json.loads(resp.audit_entries[-1])["hash"] == resp.entry_hash
            after = await stub.Decide(_req("email.send_external", {"to": ["bob@partner.example"]}))
            assert json.loads(after.decision_json)["effective"] == "allow"  # taint cleared by the reset
    finally:
        await server.stop(None)


async def _stream_order(live: Live, gate: HeldCedar) -> list[str]:
    """Over ONE DecideStream: a heavy call (held in Cedar) first, then another agent's light call."""
    outgoing: asyncio.Queue[enclave_pb2.DecideRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[enclave_pb2.DecideRequest]:
        while (request := await outgoing.get()) is not None:
            yield request

    heavy_session = live.enclave.open_session("heavy-agent", trail=NO_TRAIL)
    light_session = live.enclave.open_session("light-agent", trail=NO_TRAIL)
    gate.release_soon()
    order: list[str] = []
    call = live.stub.DecideStream(requests())
    outgoing.put_nowait(_req(HELD_TOOL, BIG_ARGUMENTS, call_id="heavy", principal="heavy-agent",
                             session_id=heavy_session))
    outgoing.put_nowait(_req("crm.lookup_customer", {"customer_id": "c"}, call_id="light",
                             principal="light-agent", session_id=light_session))
    async for reply in call:
        order.append(reply.call_id)
        assert reply.HasField("response"), reply.error_code
        gate.released.set()
        if len(order) == 2:
            outgoing.put_nowait(None)
    return order


async def test_a_stream_answers_a_light_call_while_a_heavy_one_is_decided(live: Live,
                                                                         held: HeldCedar) -> None:
    assert await _stream_order(live, held) == ["light", "heavy"]


async def test_weakened_stream_in_arrival_order_holds_the_light_call(
        live: Live, held: HeldCedar, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live.scheduler, "inline_bytes", 10**9)  # every decision on the loop
    assert await _stream_order(live, held) == ["heavy", "light"]


async def test_open_session_mints_an_owned_id_and_carries_its_entries(live: Live) -> None:
    opened = await live.stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent", trail=NO_TRAIL))
    assert session_ids.owned_by(opened.session_id, live.enclave.kid)
    entries = [json.loads(raw) for raw in opened.audit_entries]
    assert [(e["session_id"], e["kind"]) for e in entries] == [
        (live.enclave.ledger_id, "open"), (opened.session_id, "open")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="", trail=NO_TRAIL))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_decision_answer_carries_its_own_entry_and_drain_the_rest(live: Live) -> None:
    resp = await live.stub.Decide(_req("web.search", {"query": "q"}))
    assert json.loads(resp.audit_entries[-1])["data"] == json.loads(resp.decision_json)
    assert len(live.enclave.outbox) == 0
    live.enclave.close(_SESSION["id"])  # e.g. the idle expiry: no answer carries these
    drained = await live.stub.DrainAudit(enclave_pb2.DrainAuditRequest())
    assert [json.loads(raw)["kind"] for raw in drained.audit_entries] == ["close", "close"]
    assert not (await live.stub.DrainAudit(enclave_pb2.DrainAuditRequest())).audit_entries


async def test_an_id_the_enclave_did_not_mint_is_unknown_over_grpc(live: Live) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live.stub.Decide(_req("web.search", {"query": "q"}, session_id="chosen-by-the-caller"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(err.value.trailing_metadata() or ())[ERROR_METADATA_KEY] == "SESSION_UNKNOWN"
