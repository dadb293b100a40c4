"""Outcomes (Complete) ride on the next Decide / CloseSession, or go alone after a short delay.

A carried outcome is recorded before its carrier is handled (stream and unary alike), so its
entry comes back with the carrier's answer and is stored before that decision's permit is used:
no decision of a principal runs ahead of the outcome of its earlier call.

The audit guarantee: every reported outcome lands in the session's chain, before the close when
the session is closed, and in the gateway's audit store (read here through the pool's writer).
A refused carried outcome never fails its carrier.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.audit import verify_chain
from cmcp_core.audit_store import chain_entries
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, inprocess_enclave
from cmcp_enclave.enclave import Enclave, UpstreamOutcome
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import EnclaveService, serve
from cmcp_gateway import outcomes
from cmcp_gateway.enclave_pool import EnclavePool
from cmcp_gateway.pinning import Pin
from tests.helpers.gateway_stack import attest_policy, audit_writer
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "minimal"
ARGS = {"text": "hi"}
RESULT = {"content": [{"type": "text", "text": "hi"}], "isError": False}


@pytest.fixture(params=["grpc-stream", "lean-hop"])
async def served(tmp_path: Path,
                 request: pytest.FixtureRequest) -> AsyncIterator[tuple[Enclave, EnclavePool]]:
    """The same guarantees whichever transport carries the decisions (ADR 0023, ADR 0024)."""
    enclave = inprocess_enclave(BUNDLE, tmp_path)
    hop = "127.0.0.1:0" if request.param == "lean-hop" else None
    server, port = await serve(enclave, "127.0.0.1:0", Metrics(), decide_listen=hop)
    pool = EnclavePool("outcomes", attest_policy(enclave.bundle_hash), 5.0, audit_writer(tmp_path))
    await pool.set_endpoints([f"127.0.0.1:{port}"])
    try:
        yield enclave, pool
    finally:
        await pool.close()
        await server.stop(0)


async def _decide(pool: EnclavePool, pin: Pin, session_id: str) -> str:
    call_id = uuid.uuid4().hex
    decision = await pool.decide(
        pin, session_id=session_id, call_id=call_id, principal="agent", method="tools/call", tool="echo",
        arguments_json=json.dumps(ARGS).encode(), args_digest=json_digest(ARGS), audience=DEFAULT_AUDIENCE,
    )
    assert decision.document["effective"] == "allow"
    return call_id


def _stored(pool: EnclavePool, session_id: str) -> list[dict[str, object]]:
    """The session's chain as the gateway's audit store holds it."""
    return [json.loads(raw) for raw in chain_entries(pool.audit.store, session_id)]


def _kinds(pool: EnclavePool, session_id: str) -> list[str]:
    return [str(e["kind"]) for e in _stored(pool, session_id)]


async def _open(pool: EnclavePool) -> tuple[Pin, str]:
    pin = await pool.pick("agent")
    return pin, await pool.open_session(pin, "agent")


async def test_outcome_rides_on_the_next_decide_and_is_stored_before_its_permit(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)  # only a carrier can deliver it
    _, pool = served
    pin, session_id = await _open(pool)
    first = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, first, RESULT, "")
    await asyncio.sleep(0)
    assert _kinds(pool, session_id) == ["open", "decision"]
    await _decide(pool, pin, session_id)  # returns once its permit may be used
    assert _kinds(pool, session_id) == ["open", "decision", "complete", "decision"]
    done = _stored(pool, session_id)[2]["data"]
    assert isinstance(done, dict)
    assert done["call_id"] == first and done["response_digest"] == json_digest(RESULT)


async def test_weakened_enclave_recording_after_its_reply_lets_a_decision_run_ahead(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above bites: the stream as it was (outcomes recorded once the reply is out) hands
    out the next permit while the earlier call's outcome is in no store."""
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)

    async def reply_then_record(self: EnclaveService, request: Any) -> Any:
        carried = request.completes
        del request.completes[:]
        reply = await EnclaveService._decide(self, request)
        self.enclave.complete_later([UpstreamOutcome(c.session_id, c.call_id, c.response_digest,
                                                     c.response_bytes, c.error_code, c.is_error)
                                     for c in carried])
        reply.completes_handled = len(carried)
        return enclave_pb2.DecideReply(call_id=request.call_id, response=reply)

    monkeypatch.setattr(EnclaveService, "_reply", reply_then_record)
    _, pool = served
    pin, session_id = await _open(pool)
    first = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, first, RESULT, "")
    await asyncio.sleep(0)
    await _decide(pool, pin, session_id)
    assert _kinds(pool, session_id) == ["open", "decision", "decision"]


async def test_close_carries_pending_outcomes_first(served: tuple[Enclave, EnclavePool],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    enclave, pool = served
    pin, session_id = await _open(pool)
    call_id = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, call_id, None, "UPSTREAM_UNAVAILABLE")
    closed = await pool.close_session(pin, session_id, "done")
    assert _kinds(pool, session_id) == ["open", "decision", "complete", "close"]
    chain = verify_chain(_stored(pool, session_id), enclave.public_key, expected_tip=closed.chain_tip)
    assert chain.ok and chain.count == closed.entries == 4


async def test_uncarried_outcome_goes_alone(served: tuple[Enclave, EnclavePool]) -> None:
    _, pool = served
    pin, session_id = await _open(pool)
    call_id = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, call_id, RESULT, "")
    for _ in range(200):
        await asyncio.sleep(outcomes.OUTCOME_FLUSH_SECONDS)
        if _kinds(pool, session_id)[-1] == "complete":
            break
    assert _kinds(pool, session_id) == ["open", "decision", "complete"]


async def test_refused_carried_outcome_does_not_fail_the_decide(served: tuple[Enclave, EnclavePool],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    _, pool = served
    pin, session_id = await _open(pool)
    await _decide(pool, pin, session_id)
    pool.report(pin, session_id, "never-decided", RESULT, "")  # the enclave refuses this outcome
    await _decide(pool, pin, session_id)
    assert _kinds(pool, session_id) == ["open", "decision", "decision"]


async def test_enclave_that_ignores_carried_outcomes_gets_them_alone(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    """An enclave predating ``completes`` drops the field and acknowledges nothing: the gateway
    resends those outcomes as Complete calls, stops carrying, and a close still covers them."""
    monkeypatch.setattr(EnclaveService, "_carry", lambda self, completes: 0)
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    _, pool = served
    pin, session_id = await _open(pool)
    first = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, first, RESULT, "")
    second = await _decide(pool, pin, session_id)  # carried, ignored, not acknowledged
    endpoint = pool.endpoints[pin.address]
    assert endpoint.outcomes.carries is False and len(endpoint.outcomes.ready) == 1
    pool.report(pin, session_id, second, RESULT, "")
    await pool.close_session(pin, session_id, "done")  # sends both alone first, then closes
    assert _kinds(pool, session_id) == ["open", "decision", "decision", "complete", "complete", "close"]


async def _carrier_not_waiting(self: outcomes.OutcomeQueue) -> list[Any]:
    """A weakened queue: the Decide takes what it can carry and runs ahead of the rest."""
    return self.take() if self.carries is not False else []


def _hold_completes_until_the_next_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """The enclave takes a Complete only once it has decided another call (or after a second):
    an outcome that went alone is still on its way when the next decision is asked for."""
    released = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, released.set)
    complete, reply = EnclaveService.Complete, EnclaveService._reply

    async def held_complete(self: EnclaveService, request: Any, context: Any) -> Any:
        await released.wait()
        return await complete(self, request, context)

    async def releasing_reply(self: EnclaveService, request: Any) -> Any:
        try:
            return await reply(self, request)
        finally:
            released.set()

    monkeypatch.setattr(EnclaveService, "Complete", held_complete)
    monkeypatch.setattr(EnclaveService, "_reply", releasing_reply)


async def test_an_outcome_sent_alone_is_stored_before_the_next_decision(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: an outcome entry is durable before the next decision (here the flush timer sent
    it as its own Complete just before the agent's next call)."""
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    _, pool = served
    pin, session_id = await _open(pool)
    first = await _decide(pool, pin, session_id)
    _hold_completes_until_the_next_decision(monkeypatch)
    pool.report(pin, session_id, first, RESULT, "")
    pool.endpoints[pin.address].outcomes.flush_now()  # as the timer does: alone
    await _decide(pool, pin, session_id)
    assert _kinds(pool, session_id) == ["open", "decision", "complete", "decision"]


async def test_weakened_pool_not_waiting_for_an_outcome_sent_alone_lets_a_decision_run_ahead(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above bites: a pool that asks for the next decision while an outcome is still on
    its way hands out a permit with that outcome in no store."""
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    monkeypatch.setattr(outcomes.OutcomeQueue, "for_carrier", _carrier_not_waiting)
    _, pool = served
    pin, session_id = await _open(pool)
    first = await _decide(pool, pin, session_id)
    _hold_completes_until_the_next_decision(monkeypatch)
    pool.report(pin, session_id, first, RESULT, "")
    pool.endpoints[pin.address].outcomes.flush_now()
    await _decide(pool, pin, session_id)
    assert _kinds(pool, session_id) == ["open", "decision", "decision"]
    await pool.endpoints[pin.address].outcomes.settle()
    assert _kinds(pool, session_id) == ["open", "decision", "decision", "complete"]


async def test_outcomes_beyond_what_a_decide_carries_are_stored_before_it(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    """More outcomes waiting than one Decide carries (``MAX_CARRIED``): the rest go alone and are
    stored before that decision, not after it."""
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    monkeypatch.setattr(outcomes.OutcomeQueue.take, "__defaults__", (1,))  # MAX_CARRIED = 1
    _, pool = served
    pin, session_id = await _open(pool)
    first, second = await _decide(pool, pin, session_id), await _decide(pool, pin, session_id)
    _hold_completes_until_the_next_decision(monkeypatch)
    pool.report(pin, session_id, first, RESULT, "")
    pool.report(pin, session_id, second, RESULT, "")
    await _decide(pool, pin, session_id)
    assert _kinds(pool, session_id) == ["open", "decision", "decision", "complete", "complete", "decision"]


async def test_weakened_pool_leaving_uncarried_outcomes_queued_lets_a_decision_run_ahead(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    monkeypatch.setattr(outcomes.OutcomeQueue.take, "__defaults__", (1,))  # MAX_CARRIED = 1
    monkeypatch.setattr(outcomes.OutcomeQueue, "for_carrier", _carrier_not_waiting)
    _, pool = served
    pin, session_id = await _open(pool)
    first, second = await _decide(pool, pin, session_id), await _decide(pool, pin, session_id)
    pool.report(pin, session_id, first, RESULT, "")
    pool.report(pin, session_id, second, RESULT, "")
    await _decide(pool, pin, session_id)
    assert _kinds(pool, session_id) == ["open", "decision", "decision", "complete", "decision"]
