"""The GET stream's pieces that need no upstream: which listen frames reach the agent, and
waiting on a session's subscriptions (the stream end to end: tests/integration/test_mcp_subscriptions.py)."""

from __future__ import annotations

import asyncio

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
