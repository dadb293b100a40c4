"""Relaying an upstream's SSE answer as it arrives (``ReplyStream`` and ``relay.Relay``):
notifications pass in order, the response ends the stream, and every way a stream can end
badly ends with a coded answer and an outcome for the enclave, never with a silent hang."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.http1 import HttpError
from cmcp_gateway.relay import Relay
from cmcp_gateway.upstream import ReplyStream


class FakeStream:
    """An HttpStream stand-in: the body in the chunks given (an exception chunk is raised)."""

    def __init__(self, *chunks: bytes | Exception) -> None:
        self._chunks = chunks
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def event(message: dict[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + json.dumps(message).encode() + b"\r\n\r\n"


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": 1}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}


async def _messages(stream: FakeStream) -> list[dict[str, Any]]:
    return [m async for m in ReplyStream(stream, 7).messages()]  # type: ignore[arg-type]


async def test_notifications_then_the_response_even_split_across_chunks() -> None:
    other = event({"jsonrpc": "2.0", "id": 3, "result": {}})
    body = event(PROGRESS) + b": keep-alive\r\n\r\n" + other + event(RESULT)
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
    assert await _messages(FakeStream(*chunks)) == [PROGRESS, RESULT]  # another id's answer is skipped


@pytest.mark.parametrize(("chunks", "code"), [
    ((event(PROGRESS), event({"jsonrpc": "2.0", "id": 0, "method": "sampling/createMessage"})),
     Code.UPSTREAM_REQUEST_NOT_RELAYED),
    ((event(PROGRESS), HttpError("connection reset")), Code.UPSTREAM_UNAVAILABLE),
    ((event(PROGRESS),), Code.UPSTREAM_UNAVAILABLE),  # ended without the response
    ((b"data: {not json\r\n\r\n",), Code.UPSTREAM_UNAVAILABLE),
])
async def test_a_stream_that_cannot_end_well_ends_with_a_code(chunks: tuple[Any, ...], code: Code) -> None:
    with pytest.raises(CmcpError) as ended:
        await _messages(FakeStream(*chunks))
    assert ended.value.code is code


def _relay(stream: FakeStream, outcomes: list[str]) -> Relay:
    return Relay(ReplyStream(stream, 7), lambda message: message["result"], 42,  # type: ignore[arg-type]
                 {"call_id": "c"}, outcomes.append)


async def test_the_relay_answers_under_the_agents_id_and_closes_the_upstream() -> None:
    stream, outcomes = FakeStream(event(PROGRESS), event(RESULT)), []
    relay = _relay(stream, outcomes)
    events = [e async for e in relay]
    await relay.aclose()
    assert [json.loads(e.split(b"data: ", 1)[1]) for e in events] == [
        PROGRESS, {"jsonrpc": "2.0", "id": 42, "result": {"content": []}}]
    assert outcomes == [] and stream.closed  # the outcome is finish()'s to report


async def test_an_agent_that_leaves_first_is_reported_and_the_upstream_closed() -> None:
    stream, outcomes = FakeStream(event(PROGRESS), event(RESULT)), []
    relay = _relay(stream, outcomes)
    iterator = relay.__aiter__()
    await iterator.__anext__()  # the progress reached the agent; then it left
    await iterator.aclose()
    await relay.aclose()
    assert outcomes == ["AGENT_GONE"] and stream.closed
    never_read, outcomes = FakeStream(event(RESULT)), []
    await _relay(never_read, outcomes).aclose()  # the agent left before the first event
    assert outcomes == ["AGENT_GONE"] and never_read.closed


async def test_a_broken_stream_ends_with_a_coded_error_event_and_its_outcome() -> None:
    stream, outcomes = FakeStream(event(PROGRESS), HttpError("reset")), []
    relay = _relay(stream, outcomes)
    events = [e async for e in relay]
    await relay.aclose()
    last = json.loads(events[-1].split(b"data: ", 1)[1])
    assert last["id"] == 42 and last["error"]["data"]["error_code"] == "UPSTREAM_UNAVAILABLE"
    assert outcomes == ["UPSTREAM_UNAVAILABLE"] and stream.closed
