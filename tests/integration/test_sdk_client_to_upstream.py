"""mcp SDK client -> gateway -> guard-protected mcp SDK upstream, enclave as a real process.

Both eras the mcp 2.x client negotiates are exercised: ``mode="auto"`` ends on 2026-07-28
(stateless, ``server/discover``) and ``mode="legacy"`` on the 2025-11-25 handshake with an
``Mcp-Session-Id`` session.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agentrust_trace import verify_record
from mcp.shared.exceptions import MCPError

from cmcp_core.crypto import DECISION_CONTEXT, public_jwk, verify_payload
from cmcp_core.digest import b64url_decode
from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.upstream import PNG_1X1
from cmcp_gateway.config import GatewayLimits
from tests.helpers.gateway_stack import AUDIENCE, agent, run_stack
from tests.paths import ROOT

TRANSFER = {"amount": 100, "currency": "EUR", "to": "acct-1"}
MODES = ["auto", "legacy"]


@pytest.fixture(scope="module")
def enforce(enclave: EnclaveProcess) -> EnclaveProcess:
    """The enforce-mode enclave (the shared realistic one, see ``conftest.py``)."""
    return enclave


@pytest.fixture(scope="module")
def advisory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    with start_enclave(ROOT / "examples/advisory", tmp_path_factory.mktemp("adv"), audience=AUDIENCE) as proc:
        yield proc


READER = {"tok-reader": "mnpi-reader"}


@pytest.mark.parametrize(("mode", "sse"), [("auto", False), ("legacy", False), ("auto", True)])
async def test_allowed_call_keeps_structure(enforce: EnclaveProcess, mode: str, sse: bool) -> None:
    """``sse``: the upstream answers in text/event-stream (chunked); the gateway still relays it.

    Its own principal: reading the deal pipeline taints the agent (MNPI) for the bundle's window,
    across sessions, and the module's other tests must not inherit that."""
    async with (
        run_stack([enforce], audience=AUDIENCE, upstream_sse=sse, tokens=READER) as stack,
        agent(stack.url, token="tok-reader", mode=mode) as client,
    ):
        result = await client.call_tool("payments.transfer", TRANSFER)
        assert result.is_error is False
        assert result.structured_content == {**TRANSFER, "status": "sent"}
        mixed = await client.call_tool("deals.read_pipeline", {"deal_id": "d-7"})
        assert [c.type for c in mixed.content] == ["text", "image"]
        assert base64.b64decode(mixed.content[1].data) == PNG_1X1  # type: ignore[union-attr]
        parsed = await client.call_tool("résumé.parse", {"body": "naïve café résumé"})  # non-ASCII name
        assert parsed.structured_content == {"words": 3}
        assert stack.upstream.counter["payments.transfer"] == 1
        assert stack.upstream.counter["deals.read_pipeline"] == 1


@pytest.mark.parametrize("mode", MODES)
async def test_denied_call_is_coded_signed_and_never_forwarded(enforce: EnclaveProcess, mode: str) -> None:
    async with (
        run_stack([enforce], audience=AUDIENCE) as stack,
        agent(stack.url, mode=mode) as client,
    ):
        with pytest.raises(MCPError) as denied:
            await client.call_tool("payments.transfer", {**TRANSFER, "amount": 50_000})
        err = denied.value.error
        assert err.code == -32000
        data = err.data
        assert data["error_code"] == "POLICY_DENY" and data["call_id"]
        document = data["decision"]["document"].encode()
        # The agent can re-verify the enclave's signature over exactly these bytes.
        assert verify_payload(
            enforce.public_key, DECISION_CONTEXT, document, b64url_decode(data["decision"]["signature"])
        )
        doc = json.loads(document)
        assert doc["effective"] == "deny" and doc["call_id"] == data["call_id"]
        assert "policies/arguments.cedar#transfer-limit" in doc["policy_ids"]
        assert stack.upstream.counter.total() == 0


async def test_tool_outside_catalog(enforce: EnclaveProcess) -> None:
    async with run_stack([enforce], audience=AUDIENCE) as stack, agent(stack.url) as client:
        with pytest.raises(MCPError) as denied:
            await client.call_tool("add", {"a": 1, "b": 2})
        assert denied.value.error.data["error_code"] == "TOOL_NOT_IN_CATALOG"
        assert stack.upstream.counter.total() == 0


async def test_tools_list_shows_only_allowed_tools_with_upstream_definitions(enforce: EnclaveProcess) -> None:
    async with run_stack([enforce], audience=AUDIENCE) as stack, agent(stack.url) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "payments.transfer" in tools and "add" not in tools and "echo" not in tools
        assert tools["payments.transfer"].output_schema is not None  # the upstream's own definition


@pytest.mark.parametrize("mode", MODES)
async def test_advisory_forwards_and_marks(advisory: EnclaveProcess, mode: str) -> None:
    async with (
        run_stack([advisory], audience=AUDIENCE) as stack,
        agent(stack.url, mode=mode) as client,
    ):
        await client.call_tool("ehr.read_patient_record", {"patient_id": "p-1"})  # taints the session (phi)
        result = await client.call_tool("email.send_external", {"to": ["x@evil.example"], "body": "hi"})
        assert result.meta is not None and result.meta["cmcp"]["would_have_denied"] is True
        assert result.meta["cmcp"]["mode"] == "advisory"
        assert stack.upstream.counter["email.send_external"] == 1


async def test_legacy_session_lifecycle(enforce: EnclaveProcess) -> None:
    async with run_stack([enforce], audience=AUDIENCE) as stack:
        async with agent(stack.url, mode="legacy") as client:
            await client.call_tool("web.search", {"query": "q"})
            assert len(stack.gateway.sessions) == 1
        # leaving the client sends DELETE: the gateway forgets it and the enclave closed it
        assert stack.gateway.sessions == {}


async def test_raw_http_semantics(enforce: EnclaveProcess) -> None:
    """GET 405, unknown / foreign session 404, missing credential 401, parse error survives."""
    async with run_stack([enforce], audience=AUDIENCE) as stack:
        alice = {"authorization": "Bearer tok-alice", "accept": "application/json, text/event-stream"}
        bob = {**alice, "authorization": "Bearer tok-bob"}
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        async with httpx.AsyncClient() as http:
            assert (await http.get(stack.url, headers=alice)).status_code == 405
            resp = await http.post(stack.url, json=init)
            assert resp.status_code == 401 and resp.json()["error"]["data"]["error_code"] == "UNAUTHENTICATED"
            resp = await http.post(stack.url, json=init, headers={**alice, "authorization": "Bearer nope"})
            assert resp.status_code == 401
            resp = await http.post(stack.url, json=init, headers=alice)
            assert resp.json()["result"]["protocolVersion"] == "2025-06-18"
            sid = resp.headers["mcp-session-id"]
            session = {**alice, "mcp-session-id": sid}
            bad = await http.post(
                stack.url, content=b'{"jsonrpc": "2.0", "id": 2, "method": ', headers=session
            )
            assert bad.status_code == 400
            error = bad.json()["error"]
            assert error["code"] == -32700 and error["data"]["error_code"] == "MCP_PARSE_FAILURE"
            assert error["data"]["payload_hash"].startswith("sha256:")
            ping = await http.post(
                stack.url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=session
            )
            assert ping.json()["result"] == {}  # the session survived the parse error
            other = await http.post(
                stack.url,
                json={"jsonrpc": "2.0", "id": 4, "method": "ping"},
                headers={**bob, "mcp-session-id": sid},
            )
            assert other.status_code == 404  # bob cannot use alice's session
            sampling = {"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage"}
            unknown = await http.post(stack.url, json=sampling, headers=session)
            assert unknown.json()["error"]["code"] == -32601
            listed = await http.post(
                stack.url, json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, headers=session
            )
            assert "payments.transfer" in {t["name"] for t in listed.json()["result"]["tools"]}
            closed = await http.delete(stack.url, headers=session)
            assert closed.status_code == 200
            record = closed.json()["trust_record"]  # the session's signed TRACE record, pinned key
            verify_record(record, public_jwk(enforce.public_key))  # raises unless it verifies
            assert record["policy"]["bundle_hash"] == enforce.bundle_hash
            gone = await http.post(
                stack.url, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers=session
            )
            assert gone.status_code == 404
        assert stack.upstream.counter.total() == 0


async def test_open_route_uses_anonymous_principal(enforce: EnclaveProcess) -> None:
    async with (
        run_stack([enforce], audience=AUDIENCE, open_route=True) as stack,
        agent(stack.url, token=None) as client,
    ):
        result = await client.call_tool("web.search", {"query": "q"})
        assert result.structured_content is not None


async def test_idle_sessions_are_closed_at_the_enclave(enforce: EnclaveProcess, tmp_path: Path) -> None:
    limits = GatewayLimits(session_idle_seconds=0.0, decide_timeout_seconds=15.0)
    async with run_stack([enforce], audience=AUDIENCE, limits=limits) as stack:
        stack.gateway.sessions.trust_record_dir = str(tmp_path)
        async with agent(stack.url, mode="legacy") as client:
            await client.call_tool("web.search", {"query": "q"})
            (session_id,) = stack.gateway.sessions
            await stack.gateway.reap_idle()
            assert stack.gateway.sessions == {}
            record = json.loads((tmp_path / f"{session_id}.json").read_bytes())
            verify_record(record, public_jwk(enforce.public_key))
            with pytest.raises(MCPError):  # the reaped session is gone (404 -> session terminated)
                await client.call_tool("web.search", {"query": "q"})
        assert stack.upstream.counter.total() == 1
