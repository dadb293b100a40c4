"""What MCP carries besides the request and its result reaches the agent: the progress and log
notifications an upstream sends on a call's stream, with the agent's ``_meta`` (its progress
token, its log-level opt-in) relayed to the upstream. mcp SDK client -> gateway -> real enclave
-> guard -> mcp SDK upstream answering in SSE; both eras.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from cmcp_core.native_schema import native_schema
from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.upstream import RELEASES
from cmcp_gateway import pipeline
from tests.helpers.gateway_stack import AUDIENCE, agent, run_stack
from tests.paths import EXAMPLES

MODES = ["auto", "legacy"]


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """examples/minimal with the test upstream's ``progress`` and ``hold`` tools catalogued, and agents
    allowed to set the upstream's log level (how a handshake-era agent asks for log messages)."""
    bundle = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(EXAMPLES / "minimal", bundle)
    catalog = json.loads((bundle / "catalog.json").read_text())
    catalog += [{"tool_name": name, "server": "test", "sensitivity_level": "public"}
                for name in ("progress", "hold")]
    (bundle / "catalog.json").write_text(json.dumps(catalog))
    (bundle / "policies" / "logging.cedar").write_text(
        '@id("agents-may-ask-for-logs")\n'
        'permit (principal, action == cMCP::Action::"set_log_level", resource);\n')
    (bundle / "schema.cedarschema").write_text(native_schema({"text": "String", "steps": "Long"}))
    with start_enclave(bundle, tmp_path_factory.mktemp("enc"), audience=AUDIENCE) as proc:
        yield proc


@pytest.mark.parametrize("mode", MODES)
async def test_progress_and_log_notifications_reach_the_agent_before_the_result(
    enclave: EnclaveProcess, mode: str
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(params: Any) -> None:
        logs.append(params.data)

    async with (
        run_stack([enclave], audience=AUDIENCE, upstream_sse=True) as stack,
        agent(stack.url, mode=mode, logging_callback=on_log, log_level="info") as client,
    ):
        if mode == "legacy":  # the handshake era asks once, for the session (decided, permitted)
            await client.set_logging_level("info")
        result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
        assert result.content[0].text == "3 steps"  # type: ignore[union-attr]
        assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
        assert stack.upstream.counter["progress"] == 1
    # The SDK hands notifications to the logging callback from its own task: look once it is done.
    assert logs == ["done after 3 steps"]


async def test_an_agent_that_does_not_accept_sse_gets_the_result_alone(enclave: EnclaveProcess) -> None:
    import httpx

    async with run_stack([enclave], audience=AUDIENCE, upstream_sse=True) as stack:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "progress", "arguments": {"steps": 2}, "_meta": {
                    "progressToken": "p-1", "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}}}}
        headers = {"authorization": "Bearer tok-alice", "accept": "application/json",
                   "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "progress"}
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(stack.url, json=body, headers=headers)
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["result"]["content"][0]["text"] == "2 steps"
        headers["accept"] = "application/json, text/event-stream"
        async with httpx.AsyncClient(timeout=30) as http:
            streamed = await http.post(stack.url, json=body, headers=headers)
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in streamed.text.splitlines() if line.startswith("data:")]
        assert [e.get("method") for e in events] == [
            "notifications/progress", "notifications/progress", None]
        assert events[0]["params"]["progressToken"] == "p-1"  # the agent's own token, relayed
        assert events[-1]["id"] == 1 and events[-1]["result"]["content"][0]["text"] == "2 steps"


@pytest.mark.parametrize("mode", MODES)
async def test_progress_reaches_the_agent_while_the_call_still_runs(
    enclave: EnclaveProcess, mode: str
) -> None:
    """The upstream's tool waits until the agent has seen its progress: a relay that held the
    notifications back until the result would leave it waiting (and answer "not released")."""
    key = f"relay-{mode}"

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        RELEASES.setdefault(key, asyncio.Event()).set()

    async with (
        run_stack([enclave], audience=AUDIENCE, upstream_sse=True) as stack,
        agent(stack.url, mode=mode) as client,
    ):
        result = await client.call_tool("hold", {"key": key}, progress_callback=on_progress)
        assert result.content[0].text == "released"  # type: ignore[union-attr]


async def test_weakened_gateway_that_holds_notifications_back_is_caught(
    enclave: EnclaveProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same check on a gateway that reads the upstream's whole stream before answering (as
    this gateway did before): the tool never sees its progress acknowledged."""
    original = pipeline.call

    async def buffered(*args: Any, **kwargs: Any) -> Any:
        return await original(*args, **{**kwargs, "streaming": False})

    monkeypatch.setattr(pipeline, "call", buffered)
    key = "relay-buffered"

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        RELEASES.setdefault(key, asyncio.Event()).set()

    async with (
        run_stack([enclave], audience=AUDIENCE, upstream_sse=True) as stack,
        agent(stack.url) as client,
    ):
        result = await client.call_tool("hold", {"key": key, "wait_seconds": 1.0},
                                        progress_callback=on_progress)
        assert result.content[0].text == "not released"  # type: ignore[union-attr]
