"""How the suite behaves as an agent: the SDK session, raw JSON-RPC, and decoding what comes back.

The SDK client and the raw helpers talk to the dev kit's real ``mcp`` SDK upstream (``test``
profile, no guard) on loopback, so the session id, the tool results and the JSON-RPC errors are
the SDK server's own; the decoding rules are also checked on hand-written answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from cmcp_conformance import agent as agent_module
from cmcp_conformance.agent import (
    CallOutcome,
    DirectUpstream,
    agent,
    initialize_request,
    open_raw_session,
    rpc_error,
)
from cmcp_conformance.target import TargetDeployment
from cmcp_core.digest import b64url
from cmcp_devkit.upstream import RunningUpstream, run_upstream


def _response(body: str, content_type: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, text=body, headers={"content-type": content_type})


def test_rpc_error_decodes_json_errors_and_results() -> None:
    err = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "denied",
                                                "data": {"error_code": "POLICY_DENY"}}}
    out = rpc_error(_response(json.dumps(err), "application/json"))
    assert (out.ok, out.code, out.message, out.error_code) == (False, -32001, "denied", "POLICY_DENY")
    ok = rpc_error(_response(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}),
                             "application/json"))
    assert ok.ok and ok.result == {"content": []} and ok.error_code is None


def test_rpc_error_reads_the_last_sse_event() -> None:
    first = {"jsonrpc": "2.0", "id": 1, "result": {"x": 1}}
    last = {"jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "bad"}}
    body = f"event: message\ndata: {json.dumps(first)}\n\nevent: message\ndata: {json.dumps(last)}\n\n"
    out = rpc_error(_response(body, "text/event-stream"))
    assert (out.code, out.message, out.data) == (-32602, "bad", None)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        ("<html>oops</html>", "text/html", 502, "HTTP 502, not JSON: '<html>oops</html>'"),
        ('{"jsonrpc": "2.0", "id": 1}', "application/json", 200, "HTTP 200: unexpected body"),
        ('{"error": "flat string"}', "application/json", 400, "HTTP 400: unexpected body"),
    ],
)
def test_rpc_error_never_mistakes_garbage_for_a_result(body: str, content_type: str, status: int,
                                                       message: str) -> None:
    out = rpc_error(_response(body, content_type, status))
    assert not out.ok and out.code is None and out.message.startswith(message)


def test_error_data_that_is_not_an_object_is_dropped() -> None:
    err = {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "m", "data": ["x"]}}
    out = rpc_error(_response(json.dumps(err), "application/json"))
    assert out.data is None and out.error_code is None


def test_signed_decision_returns_document_and_signature_bytes() -> None:
    out = CallOutcome(code=-32001, data={"decision": {"document": '{"decision":"deny"}',
                                                      "signature": b64url(b"\x01\x02sig")}})
    assert out.signed_decision() == (b'{"decision":"deny"}', b"\x01\x02sig")
    with pytest.raises(AssertionError, match="no signed decision"):
        CallOutcome(code=-32001, data={"error_code": "PERMIT_MISSING"}).signed_decision()
    with pytest.raises(AssertionError, match="no error data"):
        CallOutcome(code=-32001).signed_decision()


def test_describe_says_result_or_error() -> None:
    assert CallOutcome(result={"a": "é"}).describe() == 'result {"a": "é"}'
    assert CallOutcome(code=-1, message="m", data={"error_code": "X"}).describe() == "error -1 X 'm'"


def test_initialize_request_names_the_client_and_protocol() -> None:
    req = initialize_request("suite", request_id=5)
    assert (req["id"], req["method"]) == (5, "initialize")
    assert req["params"]["protocolVersion"] == agent_module.PROTOCOL_VERSION
    assert req["params"]["clientInfo"]["name"] == "suite"


@pytest.fixture
async def upstream() -> AsyncIterator[RunningUpstream]:
    async with run_upstream(profile="test") as up:
        yield up


async def test_sdk_agent_lists_calls_and_keeps_the_session_id(upstream: RunningUpstream) -> None:
    target = TargetDeployment(name="up", mcp_url=upstream.url)
    async with agent(target) as session:
        first = session.session_id
        assert len(first) >= 16
        tools = await session.list_tools()
        assert {"echo", "add"} <= set(tools)
        out = await session.call("add", {"a": 2, "b": 3})
        assert out.ok and out.result is not None and out.result["structuredContent"] == {"total": 5}
        failed = await session.call("echo", {"wrong": "argument"})  # a tool error is a result, not an error
        assert failed.ok and failed.result is not None and failed.result["isError"] is True
    assert upstream.counter["add"] == 1
    async with agent(target) as again:
        assert again.session_id != first, "each agent is its own MCP session"


async def test_raw_session_and_direct_calls(upstream: RunningUpstream) -> None:
    sid = await asyncio.to_thread(open_raw_session, upstream.url, "raw-client")
    assert sid
    direct = await asyncio.to_thread(DirectUpstream, upstream.url, client_name="host")
    out = await asyncio.to_thread(direct.call, "echo", {"text": "straight"}, None)
    assert out.ok and "straight" in json.dumps(out.result)
    assert upstream.counter["echo"] == 1, "no guard here: the call ran"
    assert out.result is not None and out.result["structuredContent"] == {"result": "straight"}
    unknown = await asyncio.to_thread(direct.call, "no_such_tool", {}, "a-permit")
    assert unknown.result == {"content": [{"type": "text", "text": "Unknown tool: no_such_tool"}],
                              "isError": True}


async def test_a_refused_initialize_raises_with_status_and_body(upstream: RunningUpstream) -> None:
    missing = upstream.url.rsplit("/mcp", 1)[0] + "/not-mcp"
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await asyncio.to_thread(open_raw_session, missing, "raw-client")
    assert caught.value.response.status_code == 404
    assert str(caught.value).startswith(f"{missing} initialize: HTTP 404")
