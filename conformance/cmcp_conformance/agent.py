"""How the suite behaves as an agent: the official ``mcp`` SDK client, plus raw JSON-RPC.

The SDK client is what real agents use, so allow/deny/advisory behaviour is observed through
it. Raw HTTP is used only where the SDK cannot go (a body that is not JSON, a request with no
credential, a direct call to the upstream carrying a hand-made permit).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_conformance.target import TargetDeployment
from cmcp_core.digest import b64url_decode
from cmcp_core.permit import PERMIT_HEADER

SESSION_HEADER = "mcp-session-id"
PROTOCOL_VERSION = "2025-06-18"
CALL_TIMEOUT = 30.0


@dataclass
class CallOutcome:
    """Either the tool result (as a JSON object) or the JSON-RPC error (code, message, data)."""

    result: dict[str, Any] | None = None
    code: int | None = None
    message: str = ""
    data: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def error_code(self) -> str | None:
        """``data.error_code`` of an error, the registered cMCP code."""
        return str(self.data.get("error_code")) if self.data and "error_code" in self.data else None

    def signed_decision(self) -> tuple[bytes, bytes]:
        """``(decision_json, signature)`` the gateway relayed from the enclave on a deny."""
        assert self.data is not None, "no error data"
        decision = self.data.get("decision")
        assert isinstance(decision, dict), f"deny carries no signed decision: {self.data}"
        return str(decision["document"]).encode("utf-8"), b64url_decode(str(decision["signature"]))

    def describe(self) -> str:
        if self.ok:
            return f"result {json.dumps(self.result, ensure_ascii=False)[:200]}"
        return f"error {self.code} {self.error_code} {self.message!r}"


class Agent:
    """One MCP session through the gateway; ``session_id`` is the gateway's Mcp-Session-Id."""

    def __init__(self, session: ClientSession, captured: dict[str, str]) -> None:
        self.session = session
        self._captured = captured

    @property
    def session_id(self) -> str:
        sid = self._captured.get("session_id")
        assert sid, "the gateway assigned no Mcp-Session-Id"
        return sid

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> CallOutcome:
        try:
            result = await self.session.call_tool(tool, arguments or {}, read_timeout_seconds=CALL_TIMEOUT)
        except MCPError as exc:
            data = exc.data if isinstance(exc.data, dict) else None
            return CallOutcome(code=exc.code, message=exc.message, data=data)
        dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return CallOutcome(result=dumped)

    async def list_tools(self) -> list[str]:
        listed = await self.session.list_tools()
        return [t.name for t in listed.tools]


@contextlib.asynccontextmanager
async def agent(
    target: TargetDeployment, url: str | None = None, *, token: str | None = None
) -> AsyncIterator[Agent]:
    """An initialised SDK session on ``url`` (default: the enforce route). The session is left open
    at the gateway on exit, so the suite can close it at the enclave and collect the Trust Record."""
    captured: dict[str, str] = {}

    async def remember(response: httpx2.Response) -> None:
        sid = response.headers.get(SESSION_HEADER)
        if sid:
            captured["session_id"] = sid

    headers = {"Authorization": f"Bearer {token}"} if token else target.auth_headers()
    async with (
        httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(CALL_TIMEOUT), event_hooks={"response": [remember]}
        ) as http,
        streamable_http_client(url or target.mcp_url, http_client=http, terminate_on_close=False) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        yield Agent(session, captured)


def post_jsonrpc(
    url: str,
    body: bytes | dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    session_id: str | None = None,
    timeout: float = CALL_TIMEOUT,
) -> httpx.Response:
    """POST one raw body to an MCP endpoint, as a non-SDK client (or an attacker) would."""
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
    all_headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": PROTOCOL_VERSION,
        **(headers or {}),
    }
    if session_id:
        all_headers[SESSION_HEADER] = session_id
    return httpx.post(url, content=raw, headers=all_headers, timeout=timeout)


def rpc_error(response: httpx.Response) -> CallOutcome:
    """Decode a JSON-RPC answer (JSON or a single SSE event) into a :class:`CallOutcome`."""
    text = response.text
    if "application/json" not in response.headers.get("content-type", ""):
        data_lines = [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")]
        text = data_lines[-1] if data_lines else text
    try:
        doc = json.loads(text)
    except ValueError:
        return CallOutcome(code=None, message=f"HTTP {response.status_code}, not JSON: {text[:200]!r}")
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        data = err.get("data") if isinstance(err.get("data"), dict) else None
        return CallOutcome(code=err.get("code"), message=str(err.get("message", "")), data=data)
    if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
        return CallOutcome(result=doc["result"])
    return CallOutcome(message=f"HTTP {response.status_code}: unexpected body {text[:200]!r}")


def initialize_request(client_name: str, request_id: int = 1) -> dict[str, Any]:
    """A raw MCP ``initialize`` request naming ``client_name`` (protocol :data:`PROTOCOL_VERSION`)."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": client_name, "version": "1"},
        },
    }


def open_raw_session(url: str, client_name: str, *, headers: dict[str, str] | None = None) -> str | None:
    """``initialize`` then ``notifications/initialized`` over raw JSON-RPC; the Mcp-Session-Id.

    For the callers that are deliberately not an SDK agent (the suite's malformed-request checks,
    a host reaching the upstream straight). A refused ``initialize`` raises
    :class:`httpx.HTTPStatusError` carrying the status and the start of the body."""
    init = post_jsonrpc(url, initialize_request(client_name), headers=headers)
    if init.status_code != 200:
        message = f"{url} initialize: HTTP {init.status_code} {init.text[:200]}"
        raise httpx.HTTPStatusError(message, request=init.request, response=init)
    session_id: str | None = init.headers.get(SESSION_HEADER)
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    post_jsonrpc(url, initialized, headers=headers, session_id=session_id)
    return session_id


class DirectUpstream:
    """A guarded upstream reached straight (not through the gateway), with hand-picked permits.

    The compromised host's position: it is not an agent, it attaches (or omits) a permit header
    by hand, which is exactly what the guard is there to judge. The suite and the demo both play
    it, so both use this class."""

    def __init__(self, url: str, *, client_name: str = "host") -> None:
        self.url = url
        self.session_id = open_raw_session(url, client_name)
        self._ids = itertools.count(10)

    def call(self, tool: str, arguments: dict[str, Any], permit: str | None) -> CallOutcome:
        """One ``tools/call``; ``permit`` None sends no permit header at all."""
        headers = {PERMIT_HEADER: permit} if permit is not None else {}
        body = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        return rpc_error(post_jsonrpc(self.url, body, headers=headers, session_id=self.session_id))
