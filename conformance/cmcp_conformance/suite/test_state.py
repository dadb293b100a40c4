"""STATE-001: policy state belongs to the principal, so no new session, connection or stateless
request sheds it.

Taint rules mean nothing if an agent starts clean by opening another session. This check taints
the suite's main agent (a PHI read, as POLICY-003 does) and then tries every way a client can
start afresh on the one gateway address the target gives: a new MCP session on a new connection,
and a request without a session id. Each must still be denied. It needs nothing but the route and
a token, so it runs on every target (on a cluster too). The taint lasts the bundle's window, so
POLICY-003's clean-send half needs a principal the suite has not tainted yet.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cmcp_conformance.agent import CallOutcome, agent, post_jsonrpc, rpc_error
from cmcp_conformance.target import TargetDeployment

MAIL: dict[str, Any] = {"to": "a@example.org", "body": "hi"}


@pytest.mark.conformance("STATE-001")
def test_no_new_session_connection_or_stateless_request_sheds_a_principals_taint(
    target: TargetDeployment,
) -> None:
    prof = target.profile

    async def scenario() -> tuple[str, CallOutcome, str]:
        async with agent(target) as tainted:
            read = await tainted.call(prof.phi_tool, {"patient_id": "p-1"})
            assert read.ok, f"PHI read refused: {read.describe()}"
            first = tainted.session_id
        async with agent(target) as fresh:  # another MCP session, on another connection
            return first, await fresh.call(prof.external_tool, MAIL), fresh.session_id

    first, send, second = asyncio.run(scenario())
    assert second and second != first, f"the gateway handed out session {first!r} twice"
    assert send.error_code == "POLICY_DENY", f"a new session shed the principal's taint: {send.describe()}"
    assert (send.data or {}).get("session_id") == second, "the denial does not name the new session"

    body = {"jsonrpc": "2.0", "id": 11, "method": "tools/call",
            "params": {"name": prof.external_tool, "arguments": MAIL}}
    response = post_jsonrpc(target.mcp_url, body, headers=target.auth_headers())
    assert response.status_code == 200, f"stateless: HTTP {response.status_code} {response.text[:200]}"
    stateless = rpc_error(response)
    assert stateless.error_code == "POLICY_DENY", f"a stateless request shed it: {stateless.describe()}"
