"""REPLICA-001: gateway replicas share nothing, yet any replica serves any session and none sheds
a principal's state: the session's id names its enclave, every replica sends a principal to the
same enclave, and the enclave (not the id) decides whose session it is.

The check plays a second agent (``target.replica_token``), because a PHI read taints its
principal for the bundle's window and the suite's main agent must stay clean for other IDs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest

from cmcp_conformance.agent import (
    SESSION_HEADER,
    CallOutcome,
    agent,
    initialize_request,
    post_jsonrpc,
    rpc_error,
)
from cmcp_conformance.suite.conftest import need_replica
from cmcp_conformance.suite.sessions import wait_until_serving
from cmcp_conformance.target import TargetDeployment

MAIL: dict[str, Any] = {"to": "a@example.org", "body": "hi"}


def _call(url: str, token: str, tool: str, arguments: dict[str, Any], session_id: str | None) -> CallOutcome:
    params = {"name": tool, "arguments": arguments}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    response = post_jsonrpc(url, body, headers={"Authorization": f"Bearer {token}"}, session_id=session_id)
    assert response.status_code == 200, f"{tool} on {url}: HTTP {response.status_code} {response.text[:200]}"
    return rpc_error(response)


@pytest.mark.conformance("REPLICA-001")
def test_any_replica_serves_any_session_and_sheds_nothing(target: TargetDeployment) -> None:
    replica, token = need_replica(target)
    prof = target.profile
    for url in (target.mcp_url, replica):  # both serving (an earlier check may have restarted the enclave)
        wait_until_serving(dataclasses.replace(target, mcp_url=url))
    init = post_jsonrpc(target.mcp_url, initialize_request("cmcp-conformance-replica"),
                        headers={"Authorization": f"Bearer {token}"})
    session_id = init.headers.get(SESSION_HEADER)
    assert session_id, f"gateway assigned no Mcp-Session-Id: HTTP {init.status_code} {init.text[:300]}"

    read = _call(target.mcp_url, token, prof.phi_tool, {"patient_id": "p-1"}, session_id)
    assert read.ok, f"PHI read refused: {read.describe()}"
    here = _call(target.mcp_url, token, prof.external_tool, MAIL, session_id)
    assert here.error_code == "POLICY_DENY", f"external send after a PHI read: {here.describe()}"

    moved = _call(replica, token, prof.allowed_tool, {"text": "on another replica"}, session_id)
    assert moved.ok, f"the session did not continue on the other replica: {moved.describe()}"
    there = _call(replica, token, prof.external_tool, MAIL, session_id)
    assert there.error_code == "POLICY_DENY", f"the other replica shed the taint: {there.describe()}"
    assert (there.data or {}).get("session_id") == session_id, "the other replica used another session"
    stateless = _call(replica, token, prof.external_tool, MAIL, None)
    assert stateless.error_code == "POLICY_DENY", f"a stateless request shed it: {stateless.describe()}"

    async def new_session() -> CallOutcome:
        async with agent(target, replica, token=token) as fresh:
            return await fresh.call(prof.external_tool, MAIL)

    fresh = asyncio.run(new_session())
    assert fresh.error_code == "POLICY_DENY", f"a new session on the other replica: {fresh.describe()}"

    stolen = post_jsonrpc(replica, {"jsonrpc": "2.0", "id": 8, "method": "tools/list"},
                          headers=target.auth_headers(), session_id=session_id)
    assert stolen.status_code == 404, f"another agent used the session: HTTP {stolen.status_code}"

    closed = httpx.delete(replica, headers={"Authorization": f"Bearer {token}", "mcp-session-id": session_id},
                          timeout=30)
    assert closed.status_code == 200, f"DELETE on the other replica: HTTP {closed.status_code}"
    gone = post_jsonrpc(target.mcp_url, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                        headers={"Authorization": f"Bearer {token}"}, session_id=session_id)
    assert gone.status_code == 404, f"the closed session still serves on the first replica: {gone.text[:200]}"
