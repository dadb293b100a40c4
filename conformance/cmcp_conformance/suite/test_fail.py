"""FAIL-001..003: failures are coded and closed — nothing reaches the upstream when the decision
path is broken or the request is bad, and a bad request does not kill the session."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx
import pytest

from cmcp_conformance.agent import open_raw_session, post_jsonrpc, rpc_error
from cmcp_conformance.suite.conftest import need_outage
from cmcp_conformance.suite.sessions import FAIL_CLOSED, wait_until_serving
from cmcp_conformance.target import TargetDeployment


def _initialize(target: TargetDeployment, url: str | None = None) -> str:
    session_id = open_raw_session(url or target.mcp_url, "cmcp-conformance", headers=target.auth_headers())
    assert session_id, "gateway assigned no Mcp-Session-Id"
    return session_id


def _call(
    target: TargetDeployment,
    session_id: str | None,
    tool: str,
    arguments: dict[str, object],
    *,
    request_id: int = 2,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return post_jsonrpc(
        target.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        },
        headers=target.auth_headers() if headers is None else headers,
        session_id=session_id,
    )


@pytest.mark.conformance("FAIL-001")
def test_enclave_down_fails_closed(target: TargetDeployment, counter: Callable[[], int]) -> None:
    powers = need_outage(target)
    session_id = _initialize(target)
    warm = rpc_error(_call(target, session_id, target.profile.allowed_tool, {"text": "before"}))
    assert warm.ok, f"control call before the outage failed: {warm.describe()}"
    before = counter()
    powers.stop_enclave()
    try:
        for sid in (session_id, None):  # the running session, and a brand-new stateless request
            out = rpc_error(_call(target, sid, target.profile.allowed_tool, {"text": "during"}))
            assert not out.ok, "a call succeeded with the enclave down"
            assert out.error_code in FAIL_CLOSED, (
                f"enclave down: expected {FAIL_CLOSED}, got {out.describe()}"
            )
        assert counter() == before, "a call reached the upstream while no enclave could decide"
    finally:
        powers.start_enclave()
    wait_until_serving(target)
    # the restarted enclave lacks the old session's state: the session must end, explicitly
    after = rpc_error(_call(target, session_id, target.profile.allowed_tool, {"text": "after"}))
    assert not after.ok and after.error_code in ("SESSION_LOST", "SESSION_CLOSED"), (
        f"a session outlived its enclave: {after.describe()}"
    )


@pytest.mark.conformance("FAIL-002")
def test_parse_error_is_coded_and_session_survives(target: TargetDeployment) -> None:
    session_id = _initialize(target)
    body = b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {'
    resp = post_jsonrpc(target.mcp_url, body, headers=target.auth_headers(), session_id=session_id)
    out = rpc_error(resp)
    assert out.code == -32700 and out.error_code == "MCP_PARSE_FAILURE", out.describe()
    assert out.data and out.data.get("payload_hash") == "sha256:" + hashlib.sha256(body).hexdigest(), (
        f"payload hash missing or wrong: {out.data}"
    )
    after = rpc_error(_call(target, session_id, target.profile.allowed_tool, {"text": "still here"}))
    assert after.ok, f"the session did not survive a parse error: {after.describe()}"


@pytest.mark.conformance("FAIL-003")
def test_bad_requests_are_coded_and_never_forwarded(
    target: TargetDeployment, counter: Callable[[], int]
) -> None:
    before = counter()
    anonymous = _call(target, None, target.profile.allowed_tool, {"text": "who?"}, headers={})
    out = rpc_error(anonymous)
    assert anonymous.status_code == 401 and out.error_code == "UNAUTHENTICATED", out.describe()
    forged = _call(
        target,
        None,
        target.profile.allowed_tool,
        {"text": "who?"},
        headers={"Authorization": "Bearer not-a-real-token"},
    )
    assert rpc_error(forged).error_code == "UNAUTHENTICATED", rpc_error(forged).describe()
    session_id = _initialize(target)
    unknown = post_jsonrpc(
        target.mcp_url,
        {"jsonrpc": "2.0", "id": 3, "method": "sampling/createMessage", "params": {}},
        headers=target.auth_headers(),
        session_id=session_id,
    )
    assert rpc_error(unknown).code == -32601, rpc_error(unknown).describe()
    huge = _call(target, session_id, target.profile.allowed_tool, {"text": "x" * (4 * 1024 * 1024)})
    out = rpc_error(huge)
    assert out.error_code in ("BODY_TOO_LARGE", "STRING_TOO_LONG"), out.describe()
    assert counter() == before, "a refused request reached the upstream"
