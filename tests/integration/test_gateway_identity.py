"""Only the gateway the initdata names may change an enclave's state: real processes.

The local stack's enclave pins the stack's gateway key in its measured initdata; the gateway
signs every enclave call with that key, so agents' calls work as before. A stranger who reaches
the enclave's port (another pod, a compromised node) tries to close the agent's session and to
take the audit entries waiting to leave: both are refused with ``GATEWAY_UNAUTHENTICATED`` and
the session goes on. The weakened row launches the same enclave without the pin: the same
stranger closes the session, which is what the pin stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from cmcp_conformance.target import Profile
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.stack import LocalStack
from tests.helpers.local_stack import serve_conformance_route


def _stack(tmp_path: Path, *, pinned: bool) -> LocalStack:
    return serve_conformance_route(LocalStack(tmp_path), "identity/enforce", pinned=pinned)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    running = _stack(tmp_path, pinned=True)
    try:
        yield running
    finally:
        running.close()


def _rpc(http: httpx.Client, url: str, method: str, params: dict[str, Any], session: str | None,
         request_id: int) -> dict[str, Any]:
    headers = {"accept": "application/json, text/event-stream"}
    if session:
        headers["mcp-session-id"] = session
    resp = http.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
                     headers=headers)
    body: dict[str, Any] = resp.json() if resp.content else {}
    if method == "initialize":
        body["session"] = resp.headers["mcp-session-id"]
    return body


def _agent_session(stack: LocalStack) -> tuple[httpx.Client, str, str]:
    url = f"{stack.gateway_url}/mcp/enforce"
    http = httpx.Client(headers={"authorization": f"Bearer {stack.token}"}, timeout=30)
    opened = _rpc(http, url, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                            "clientInfo": {"name": "t", "version": "1"}}, None, 0)
    return http, url, str(opened["session"])


def _call(http: httpx.Client, url: str, session: str, n: int) -> dict[str, Any]:
    call = {"name": Profile().allowed_tool, "arguments": {"text": f"hi {n}"}}
    return _rpc(http, url, "tools/call", call, session, n)


def _stranger_closes(stack: LocalStack, session: str) -> grpc.StatusCode | None:
    """The stranger's CloseSession straight to the enclave's port; ``None`` when it went through."""
    with grpc.insecure_channel(stack.enclaves["enforce"].address) as channel:
        try:
            enclave_pb2_grpc.EnclaveStub(channel).CloseSession(
                enclave_pb2.CloseSessionRequest(session_id=session, reason="stranger"), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return None


def test_the_pinned_gateway_serves_agents_and_a_stranger_can_neither_close_nor_drain(
        stack: LocalStack) -> None:
    http, url, session = _agent_session(stack)
    try:
        assert "result" in _call(http, url, session, 1)
        assert _stranger_closes(stack, session) is grpc.StatusCode.PERMISSION_DENIED
        address = stack.enclaves["enforce"].address
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
            enclave_pb2_grpc.EnclaveStub(channel).DrainAudit(enclave_pb2.DrainAuditRequest(), timeout=10)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "result" in _call(http, url, session, 2)  # the session goes on
    finally:
        http.close()


def test_weakened_enclave_without_the_pin_lets_the_stranger_close_the_agents_session(
        tmp_path: Path) -> None:
    stack = _stack(tmp_path, pinned=False)
    try:
        http, url, session = _agent_session(stack)
        try:
            assert "result" in _call(http, url, session, 1)
            assert _stranger_closes(stack, session) is None
            assert "result" not in _call(http, url, session, 2)  # the agent's session is gone
        finally:
            http.close()
    finally:
        stack.close()
