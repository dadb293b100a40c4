"""An upstream's questions to the agent (elicitation, sampling), end to end and under policy.

mcp SDK client -> gateway -> real enclave process -> guard -> the everything upstream on the
official SDK, which asks through ``InputRequiredResult`` (MCP 2026-07-28). A 2026-07-28 agent
(``auto``) gets the result and repeats its call with its answers; a handshake-era agent
(``legacy``) is asked on the call's stream and the gateway repeats the call for it. Either way
each question is decided by the enclave first, and the answers reach the upstream only under a
permit that binds them.

The attackers: an upstream asking a question the policy forbids (it must never reach the agent,
and the tool never runs), and an agent or gateway that sends answers to a question nobody let
through (refused with ``INPUT_NOT_ASKED``, nothing runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import CreateMessageResult, ElicitResult, TextContent

from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_gateway import pipeline
from tests.helpers.everything_stack import ALLOW, everything_bundle, everything_stack
from tests.helpers.gateway_stack import AUDIENCE, MODERN_META, agent

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

FORBID_ASKING = ('@id("no-questions")\nforbid (principal, action in [cMCP::Action::"elicit", '
                 'cMCP::Action::"sample"], resource);\n')
MODES = ["auto", "legacy"]


@contextlib.contextmanager
def _enclave(root: Path, *policies: str) -> Iterator[EnclaveProcess]:
    bundle = everything_bundle(root / "bundle", *policies)
    with start_enclave(bundle, root / "enc", audience=AUDIENCE) as proc:
        yield proc


@pytest.fixture(scope="module")
def asking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    with _enclave(tmp_path_factory.mktemp("asking"), ALLOW) as proc:
        yield proc


@pytest.fixture(scope="module")
def no_questions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    with _enclave(tmp_path_factory.mktemp("quiet"), ALLOW, FORBID_ASKING) as proc:
        yield proc


class Asked:
    """The agent's side: what it was asked, and its answers."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    async def elicit(self, context: Any, params: Any) -> ElicitResult:
        self.questions.append(params.message)
        return ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def sample(self, context: Any, params: Any) -> CreateMessageResult:
        self.questions.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="forty-two"),
                                   model="test-model")


def _client(url: str, mode: str, asked: Asked) -> Any:
    return agent(url, token=None, mode=mode, elicitation_callback=asked.elicit,
                 sampling_callback=asked.sample)


@pytest.mark.parametrize("mode", MODES)
async def test_an_allowed_question_reaches_the_agent_and_its_answer_the_tool(
    asking: EnclaveProcess, mode: str
) -> None:
    asked = Asked()
    async with everything_stack(asking) as (url, up), _client(url, mode, asked) as client:
        elicited = await client.call_tool("test_elicitation", {"message": "Who are you?"})
        sampled = await client.call_tool("test_sampling", {"prompt": "What is six times seven?"})
    assert asked.questions == ["Who are you?", "What is six times seven?"]
    assert "ada@example.com" in elicited.content[0].text  # type: ignore[union-attr]
    assert sampled.content[0].text == "LLM response: forty-two"  # type: ignore[union-attr]
    assert (up.counter["test_elicitation"], up.counter["test_sampling"]) == (1, 1)


@pytest.mark.parametrize("mode", MODES)
async def test_a_question_the_policy_forbids_never_reaches_the_agent(
    no_questions: EnclaveProcess, mode: str
) -> None:
    asked = Asked()
    async with everything_stack(no_questions) as (url, up), _client(url, mode, asked) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("test_elicitation", {"message": "Your password?"})
        plain = await client.call_tool("test_simple_text", {})  # the session goes on
    data: Any = refused.value.error.data
    assert data["error_code"] == "POLICY_DENY"
    assert data["decision"]["document"].count('"method":"elicitation/create"') == 1
    assert asked.questions == []
    assert up.counter["test_elicitation"] == 0
    assert not plain.is_error


async def test_answers_to_a_question_never_asked_are_refused_and_nothing_runs(asking: EnclaveProcess) -> None:
    """A 2026-07-28 agent (or a gateway) that invents the answer the tool waits for."""
    async with everything_stack(asking) as (url, up), httpx.AsyncClient() as http:
        params = {"name": "test_elicitation", "arguments": {"message": "Who are you?"}, "_meta": MODERN_META,
                  "inputResponses": {"cmcp_devkit.everything:ask_user": {
                      "action": "accept", "content": {"username": "mallory", "email": "m@evil.example"}}}}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28",
                   "mcp-method": "tools/call", "mcp-name": "test_elicitation"}
        reply = await http.post(url, json=call, headers=headers)
    error = reply.json()["error"]
    assert error["data"]["error_code"] == "INPUT_NOT_ASKED", error
    assert up.counter["test_elicitation"] == 0


async def test_an_answer_posted_for_no_question_is_refused(asking: EnclaveProcess) -> None:
    """A response the gateway is not waiting on in this session (forged, late, or another
    session's) is a clear 400 and goes nowhere."""
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
                        "clientInfo": {"name": "t", "version": "1"}}}
    async with everything_stack(asking) as (url, up), httpx.AsyncClient() as http:
        opened = await http.post(url, json=hello, headers=headers)
        session = {**headers, "mcp-session-id": opened.headers["mcp-session-id"]}
        late = {"jsonrpc": "2.0", "id": "cmcp-input-0", "result": {}}
        reply = await http.post(url, json=late, headers=session)
    assert reply.status_code == 400
    assert reply.json()["error"]["data"]["error_code"] == "MCP_INVALID_REQUEST"
    assert up.counter.total() == 0


@pytest.mark.parametrize("mode", MODES)
async def test_weakened_gateway_that_does_not_ask_the_enclave_shows_the_question_but_runs_nothing(
    no_questions: EnclaveProcess, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hole the gateway's check closes (the question reaches the agent), and the one the
    enclave still holds shut: the answer it did not let through never reaches the tool."""

    async def relay_unasked(self: Any, pending: Any) -> None:
        return None

    monkeypatch.setattr(pipeline.Conversation, "let_ask", relay_unasked)
    asked = Asked()
    async with everything_stack(no_questions) as (url, up), _client(url, mode, asked) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("test_elicitation", {"message": "Your password?"})
    assert asked.questions == ["Your password?"]  # what the real gateway never shows
    data: Any = refused.value.error.data
    assert data["error_code"] == "INPUT_NOT_ASKED"
    assert up.counter["test_elicitation"] == 0


async def test_an_upstream_still_asking_after_the_last_round_is_cut_off_before_the_agent_is_asked(
    asking: EnclaveProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that keeps asking (here: with no round left) never reaches the agent again."""
    monkeypatch.setattr(pipeline, "MAX_INPUT_ROUNDS", 0)
    asked = Asked()
    async with everything_stack(asking) as (url, up), _client(url, "legacy", asked) as client:
        with pytest.raises(MCPError) as cut:
            await client.call_tool("test_elicitation", {"message": "Who are you?"})
        plain = await client.call_tool("test_simple_text", {})  # the session goes on
    data: Any = cut.value.error.data
    assert data["error_code"] == "UPSTREAM_UNAVAILABLE"
    assert asked.questions == []
    assert up.counter["test_elicitation"] == 0  # no answer round ran
    assert not plain.is_error


async def test_the_answer_of_the_last_allowed_round_reaches_the_agent(
    asking: EnclaveProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counterpart of the cut-off: with exactly one round allowed, a one-question tool ends
    normally (a cut-off that counted the final answer as a round would drop it)."""
    monkeypatch.setattr(pipeline, "MAX_INPUT_ROUNDS", 1)
    asked = Asked()
    async with everything_stack(asking) as (url, up), _client(url, "legacy", asked) as client:
        elicited = await client.call_tool("test_elicitation", {"message": "Who are you?"})
    assert asked.questions == ["Who are you?"]
    assert "ada@example.com" in elicited.content[0].text  # type: ignore[union-attr]
    assert up.counter["test_elicitation"] == 1


async def test_a_handshake_era_agent_without_a_stream_is_told_and_nothing_runs(
    asking: EnclaveProcess,
) -> None:
    """Asked on no stream, the question would be lost and the upstream left waiting: the agent
    gets ``UPSTREAM_REQUEST_NOT_RELAYED`` and the tool's answer round never runs."""
    headers = {"accept": "application/json", "mcp-protocol-version": "2025-11-25"}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
                        "clientInfo": {"name": "t", "version": "1"}}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "test_elicitation", "arguments": {"message": "Who are you?"}}}
    async with everything_stack(asking) as (url, up), httpx.AsyncClient() as http:
        opened = await http.post(url, json=hello, headers=headers)
        session = {**headers, "mcp-session-id": opened.headers["mcp-session-id"]}
        reply = await http.post(url, json=call, headers=session)
    assert reply.json()["error"]["data"]["error_code"] == "UPSTREAM_REQUEST_NOT_RELAYED", reply.text
    assert up.counter["test_elicitation"] == 0
