"""bench.loadgen: reading an SSE answer (the response and the notifications before it) and
counting a call's progress notifications, as the streamed-call figure does."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.loadgen import CallError, _parse_answer, count_progress, split_sse, sse_messages


def _event(message: dict[str, object], newline: str = "\r\n") -> str:
    return f"event: message{newline}data: {json.dumps(message)}{newline}{newline}"


def _progress(token: object, step: int) -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": token, "progress": step, "total": 3}}


RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "x"}]}}


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_notifications_before_the_response_are_kept_in_order(newline: str) -> None:
    text = "".join(_event(m, newline) for m in (_progress(7, 1), _progress(7, 2), _progress(7, 3), RESULT))
    response, notes = split_sse(text)
    assert response == RESULT
    assert [n["params"]["progress"] for n in notes] == [1, 2, 3]  # type: ignore[index]
    assert count_progress(notes, 7) == 3


def test_only_progress_for_the_calls_token_counts() -> None:
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}}
    notes = [_progress(7, 1), _progress(8, 2), log, _progress("7", 3), {"method": "notifications/progress"}]
    assert count_progress(notes, 7) == 1


def test_a_request_from_the_server_and_messages_after_the_response_are_not_notifications() -> None:
    ping = {"jsonrpc": "2.0", "id": "s-1", "method": "ping"}
    text = "".join(_event(m) for m in (ping, _progress(7, 1), RESULT, _progress(7, 2)))
    response, notes = split_sse(text)
    assert response == RESULT and notes == [_progress(7, 1)]


def test_an_events_data_lines_are_joined() -> None:
    assert sse_messages('data: {"a":\ndata: 1}\n\n: comment\n\ndata: [2]') == [{"a": 1}, [2]]


def _resp(body: str, ctype: str) -> httpx.Response:
    return httpx.Response(200, content=body.encode(), headers={"content-type": ctype})


def test_an_answer_is_read_as_sse_or_json_by_its_content_type() -> None:
    sse = "".join(_event(m) for m in (_progress(7, 1), RESULT))
    assert _parse_answer(_resp(sse, "text/event-stream")) == (RESULT, [_progress(7, 1)])
    assert _parse_answer(_resp(json.dumps(RESULT), "application/json")) == (RESULT, [])


@pytest.mark.parametrize("body", ["".join(_event(_progress(7, 1))), "data: {not json\n\n"])
def test_an_sse_answer_without_a_json_rpc_response_is_a_call_error(body: str) -> None:
    with pytest.raises(CallError):
        _parse_answer(_resp(body, "text/event-stream"))
