"""Outcomes (Complete) ride on the next Decide / CloseSession, or go alone after a short delay.

On the decision stream a carried outcome is recorded right after its carrier's reply is sent;
on the unary Decide and CloseSession, before the carrier is handled.

The audit guarantee is unchanged: every reported outcome lands in the session's chain, before
the close when the session is closed, and a refused carried outcome never fails its carrier.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cmcp_core.audit import verify_chain
from cmcp_core.digest import json_digest
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import EnclaveService, serve
from cmcp_gateway import outcomes
from cmcp_gateway.enclave_pool import EnclavePool
from cmcp_gateway.pinning import Pin
from tests.helpers.gateway_stack import attest_policy
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "minimal"
ARGS = {"text": "hi"}
RESULT = {"content": [{"type": "text", "text": "hi"}], "isError": False}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Enclave, EnclavePool]]:
    enclave = inprocess_enclave(BUNDLE, tmp_path)
    server, port = await serve(enclave, "127.0.0.1:0", Metrics())
    pool = EnclavePool("outcomes", attest_policy(enclave.bundle_hash), 5.0)
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


def _kinds(enclave: Enclave, session_id: str) -> list[str]:
    return [e["kind"] for e in enclave.export_audit(session_id, 0)]


async def test_outcome_rides_on_the_next_decide(served: tuple[Enclave, EnclavePool],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)  # only a carrier can deliver it
    enclave, pool = served
    session_id = uuid.uuid4().hex
    pin = pool.pick(session_id)
    first = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, first, RESULT, "")
    await asyncio.sleep(0)
    assert _kinds(enclave, session_id) == ["open", "decision"]
    await _decide(pool, pin, session_id)
    # recorded right after the carrier's reply went out (off the critical path), before anything
    # else reads the chain
    assert _kinds(enclave, session_id) == ["open", "decision", "decision", "complete"]
    done = list(enclave.export_audit(session_id, 0))[3]["data"]
    assert done["call_id"] == first and done["response_digest"] == json_digest(RESULT)


async def test_close_carries_pending_outcomes_first(served: tuple[Enclave, EnclavePool],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    enclave, pool = served
    session_id = uuid.uuid4().hex
    pin = pool.pick(session_id)
    call_id = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, call_id, None, "UPSTREAM_UNAVAILABLE")
    closed = await pool.close_session(pin, session_id, "done")
    assert _kinds(enclave, session_id) == ["open", "decision", "complete", "close"]
    entries = list(enclave.export_audit(session_id, 0))
    chain = verify_chain(entries, enclave.public_key, expected_tip=closed.chain_tip)
    assert chain.ok and chain.count == closed.entries == 4


async def test_uncarried_outcome_goes_alone(served: tuple[Enclave, EnclavePool]) -> None:
    enclave, pool = served
    session_id = uuid.uuid4().hex
    pin = pool.pick(session_id)
    call_id = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, call_id, RESULT, "")
    for _ in range(200):
        await asyncio.sleep(outcomes.OUTCOME_FLUSH_SECONDS)
        if _kinds(enclave, session_id)[-1] == "complete":
            break
    assert _kinds(enclave, session_id) == ["open", "decision", "complete"]


async def test_refused_carried_outcome_does_not_fail_the_decide(served: tuple[Enclave, EnclavePool],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    enclave, pool = served
    session_id = uuid.uuid4().hex
    pin = pool.pick(session_id)
    await _decide(pool, pin, session_id)
    pool.report(pin, session_id, "never-decided", RESULT, "")  # the enclave refuses this outcome
    await _decide(pool, pin, session_id)
    assert _kinds(enclave, session_id) == ["open", "decision", "decision"]


async def test_enclave_that_ignores_carried_outcomes_gets_them_alone(
        served: tuple[Enclave, EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    """An enclave predating ``completes`` drops the field and acknowledges nothing: the gateway
    resends those outcomes as Complete calls, stops carrying, and a close still covers them."""
    monkeypatch.setattr(EnclaveService, "_carry", lambda self, completes: 0)
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    enclave, pool = served
    session_id = uuid.uuid4().hex
    pin = pool.pick(session_id)
    first = await _decide(pool, pin, session_id)
    pool.report(pin, session_id, first, RESULT, "")
    second = await _decide(pool, pin, session_id)  # carried, ignored, not acknowledged
    endpoint = pool.endpoints[pin.address]
    assert endpoint.outcomes.carries is False and len(endpoint.outcomes.ready) == 1
    pool.report(pin, session_id, second, RESULT, "")
    await pool.close_session(pin, session_id, "done")  # sends both alone first, then closes
    assert _kinds(enclave, session_id) == ["open", "decision", "decision", "complete", "complete", "close"]
