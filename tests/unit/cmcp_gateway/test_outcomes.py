"""One endpoint's outcome queue: carriers take the oldest first, a lost carrier's load goes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway import outcomes
from cmcp_gateway.outcomes import OutcomeQueue

RESULT = {"content": [{"type": "text", "text": "hi"}], "isError": False}


class Sent:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def __call__(self, request: Any) -> None:
        self.calls.append(request.call_id)
        if self.fail:
            raise CmcpError(Code.TEE_UNAVAILABLE, "gone")


def _queue(sent: Sent) -> OutcomeQueue:
    return OutcomeQueue(sent, "route", "127.0.0.1:50051")


async def test_carriers_take_the_oldest_first_and_a_failed_carrier_puts_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 60.0)
    queue = _queue(Sent())
    for n in range(3):
        queue.report("s", f"c{n}", RESULT, "")
    taken = queue.take(2)
    assert [r.call_id for r in taken] == ["c0", "c1"] and taken[0].response_digest.startswith("sha256:")
    queue.requeue(taken)
    assert [r.call_id for r in queue.take(None)] == ["c0", "c1", "c2"]


async def test_an_enclave_that_does_not_acknowledge_gets_them_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "OUTCOME_FLUSH_SECONDS", 0.0)
    sent = Sent()
    queue = _queue(sent)
    queue.report("s", "c0", None, "UPSTREAM_UNAVAILABLE")
    carried = queue.take()
    queue.acknowledged(carried, 0)
    assert queue.carries is False
    await asyncio.sleep(0.01)
    await queue.settle()
    assert sent.calls == ["c0"]


async def test_what_nothing_carries_goes_alone_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = Sent(fail=True)
    queue = _queue(sent)
    queue.report("s", "c0", RESULT, "")
    await asyncio.sleep(outcomes.OUTCOME_FLUSH_SECONDS * 3)
    await queue.settle()
    assert sent.calls == ["c0"] and "complete failed" in caplog.text
