"""The GET stream's pieces that need no upstream: which listen frames reach the agent, and
waiting on a session's subscriptions (the stream end to end: tests/integration/test_mcp_subscriptions.py)."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest

from cmcp_gateway.relay import sse_event
from cmcp_gateway.sessions import McpSession
from cmcp_gateway.subscriptions import _changed_within, _is_update


def _frame(message: object) -> bytes:
    return sse_event(orjson.dumps(message))


@pytest.mark.parametrize(("message", "passes"), [
    ({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://x"}}, True),
    ({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": {}}, False),
    ({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}, False),  # never offered
    ({"jsonrpc": "2.0", "id": 7, "result": {}}, False),  # the listen's own end
])
def test_only_resource_updates_reach_the_agent(message: object, passes: bool) -> None:
    assert _is_update(_frame(message)) is passes


def test_a_frame_that_is_not_json_is_dropped() -> None:
    assert _is_update(b"event: message\r\ndata: {not json\r\n\r\n") is False


async def test_a_change_wakes_the_stream_and_silence_times_out() -> None:
    session = McpSession(id="s", agent="a", route="r", pin=None, stateful=True)  # type: ignore[arg-type]
    assert await _changed_within(session, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, session.follow, "test://x", True)
    assert await _changed_within(session, 5) is True
    assert session.subscriptions == {"test://x"}
    session.end()
    assert session.ended and await _changed_within(session, 0.01) is True


async def _cancelled_as_the_change_arrives(wait: object) -> asyncio.Task[bool]:
    """Run ``wait(session, 5)``; in one loop turn, change the subscriptions and cancel it (an
    agent that unsubscribes as it leaves): the task, once it has run its course."""
    session = McpSession(id="s", agent="a", route="r", pin=None, stateful=True)  # type: ignore[arg-type]
    task: asyncio.Task[bool] = asyncio.ensure_future(wait(session, 5))  # type: ignore[operator]
    await asyncio.sleep(0)  # parked on the change
    session.follow("test://x", True)
    task.cancel()
    await asyncio.wait({task})
    return task


async def test_a_cancellation_that_meets_a_change_is_not_swallowed() -> None:
    assert (await _cancelled_as_the_change_arrives(_changed_within)).cancelled()


async def _changed_within_wait_for(session: McpSession, seconds: float) -> bool:
    """The weakened wait, as it was: ``asyncio.wait_for``."""
    try:
        await asyncio.wait_for(session.subscriptions_changed.wait(), seconds)
    except TimeoutError:
        return False
    return True


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for is built on asyncio.timeout from 3.12")
async def test_the_attack_wait_for_swallows_that_cancellation() -> None:
    task = await _cancelled_as_the_change_arrives(_changed_within_wait_for)
    assert not task.cancelled() and task.result() is True  # the GET stream would have looped on
