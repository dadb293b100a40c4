"""The MCP handler with replicas: any replica serves any session, the enclave judges every adoption,
an ended session is 404 everywhere, and limits and protocol versions hold for adopted sessions.

Two handlers with their own session tables play two gateway replicas in front of one fake pool
whose enclaves hold sessions as real ones do (``tests.helpers.session_pool``). The real
processes are in ``tests/integration/test_gateway_replicas.py``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from mcp.shared.inbound import encode_header_value

from cmcp_core.errors import CmcpError, Code
from cmcp_core.session_id import mint
from cmcp_gateway.auth import TokenStore
from cmcp_gateway.config import GatewayLimits, RouteConfig
from cmcp_gateway.limits import ConcurrencyLimiter
from cmcp_gateway.pinning import Pin
from cmcp_gateway.protocol import (
    LOOPBACK_HOSTS,
    SESSION_HEADER,
    McpHandler,
    check_host_and_origin,
    check_routing_headers,
)
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import SessionTable
from cmcp_gateway.transport import HttpRequest, Response
from tests.helpers.session_pool import ENCLAVES, FakePool

TOKENS = TokenStore({"tok-alice": "alice", "tok-mallory": "mallory"})
TOOLS = [{"name": "echo", "inputSchema": {"type": "object"}}]
PATH = "/mcp/demo"


class _Unreachable:
    """An upstream nobody can reach: the handshake falls back to offering tools only."""

    async def offered(self) -> dict[str, Any]:
        raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "no upstream in these tests")


def _replica(pool: FakePool, **limits: Any) -> McpHandler:
    config = RouteConfig(name="demo", upstream="http://127.0.0.1:9/mcp", audience="a")
    # The upstream's tool list, cached far into the future: these tests never reach an upstream.
    runtime = RouteRuntime(config, pool, upstream=_Unreachable(),  # type: ignore[arg-type]
                           tools=(time.monotonic() + 1e6, TOOLS))
    gateway_limits = GatewayLimits(**limits)
    table = SessionTable(gateway_limits.max_sessions, 60.0, None, gateway_limits.max_sessions_per_agent)
    return McpHandler({PATH: runtime}, table, TOKENS, gateway_limits, ConcurrencyLimiter(8))


async def _send(handler: McpHandler, method: str = "tools/list", *, token: str = "tok-alice",
                session: str | None = None, http: str = "POST", version: str | None = None) -> Response:
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}
    body = orjson.dumps(request) if http == "POST" else b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    if session is not None:
        headers[SESSION_HEADER] = session
    if version is not None:
        headers["mcp-protocol-version"] = version
    if version == "2026-07-28":  # a 2026-07-28 client mirrors the method in Mcp-Method
        headers["mcp-method"] = method
    return await handler.handle(HttpRequest(http, PATH, headers, None, receive))


def _json(response: Response) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(response.body)
    return doc


async def _open(handler: McpHandler, pool: FakePool, token: str = "tok-alice") -> str:
    """``initialize`` on ``handler``; the enclave now holds the session (as after OpenSession)."""
    response = await _send(handler, "initialize", token=token)
    session_id = (response.headers or {})[SESSION_HEADER]
    pool.opened(handler.sessions[session_id])
    return session_id


async def test_a_session_opened_on_one_replica_is_served_by_another() -> None:
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    session_id = await _open(a, pool)
    response = await _send(b, session=session_id)
    assert response.status == 200 and _json(response)["result"]["tools"] == TOOLS
    assert (response.headers or {})[SESSION_HEADER] == session_id
    assert b.sessions[session_id].pin == a.sessions[session_id].pin  # the same enclave
    assert (await _send(b, "ping", session=session_id)).status == 200


@pytest.mark.parametrize("forged", ["stolen", "minted-elsewhere", "no-owner"])
async def test_an_id_that_is_not_this_agents_session_is_404_on_every_replica(forged: str) -> None:
    """Mallory presents Alice's id (learnt somehow), or ids no enclave minted, to a replica that
    never saw them: 404 exactly as for an unknown session; nothing is adopted."""
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    alices = await _open(a, pool)
    session_id = {"stolen": alices, "minted-elsewhere": mint(ENCLAVES[2].kid), "no-owner": "f" * 32}[forged]
    for replica in (a, b):
        response = await _send(replica, session=session_id, token="tok-mallory")
        assert response.status == 404, response.body
        assert _json(response)["error"]["data"]["error_code"] == "SESSION_CLOSED"
    assert b.sessions.find(session_id) is None


async def test_mallory_cannot_close_alices_session_through_another_replica() -> None:
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    alices = await _open(a, pool)
    assert (await _send(b, http="DELETE", session=alices, token="tok-mallory")).status == 404
    assert pool.closed == []
    assert (await _send(a, session=alices)).status == 200


async def test_weakened_adoption_on_the_id_alone_lets_mallory_close_alices_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway that trusts the id (the enclave's judgement monkeypatched away): Mallory's
    DELETE through another replica closes Alice's session. The test above catches this."""
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    alices = await _open(a, pool)

    async def trusting(pin: Pin, session_id: str, principal: str, _token: str = "") -> list[str]:
        return []

    monkeypatch.setattr(pool, "list_tools", trusting)
    assert (await _send(b, http="DELETE", session=alices, token="tok-mallory")).status == 200
    assert [sid for sid, _ in pool.closed] == [alices]


async def test_delete_on_another_replica_closes_at_the_enclave_and_ends_the_session_everywhere() -> None:
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    session_id = await _open(a, pool)
    assert (await _send(a, session=session_id)).status == 200  # cached on a
    closed = await _send(b, http="DELETE", session=session_id)
    assert closed.status == 200 and _json(closed)["session_id"] == session_id
    assert pool.closed == [(session_id, "client closed")]
    # a still caches it: the enclave's SESSION_CLOSED turns into the spec's 404 and a forgets it
    stale = await _send(a, session=session_id)
    assert stale.status == 404 and session_id not in a.sessions
    assert (await _send(b, session=session_id)).status == 404


async def test_a_session_whose_enclave_is_gone_is_lost_on_the_other_replica() -> None:
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    session_id = await _open(a, pool)
    pool.enclaves.remove(a.sessions[session_id].pin)
    response = await _send(b, session=session_id)
    assert _json(response)["error"]["data"]["error_code"] == "SESSION_LOST"
    assert pool.asked == []  # no other enclave was asked to take it


async def test_adopted_sessions_count_against_the_agents_limit() -> None:
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool, max_sessions_per_agent=1)
    first, second = await _open(a, pool), await _open(a, pool)
    assert (await _send(b, session=first)).status == 200
    limited = await _send(b, session=second)
    assert _json(limited)["error"]["data"]["error_code"] == "SESSION_LIMIT"
    assert second not in b.sessions


async def test_the_protocol_version_header_is_honoured_on_an_adopted_session() -> None:
    pool = FakePool(ENCLAVES)
    a, b = _replica(pool), _replica(pool)
    session_id = await _open(a, pool)
    modern = _json(await _send(b, session=session_id, version="2026-07-28"))["result"]
    assert modern["cacheScope"] == "private" and modern["resultType"] == "complete"
    legacy = _json(await _send(b, session=session_id, version="2025-06-18"))["result"]
    assert "cacheScope" not in legacy and legacy["tools"] == TOOLS


@pytest.mark.parametrize("headers, body_name", [
    ({"mcp-method": "tools/list"}, "echo"),  # says list, runs a call
    ({"mcp-method": "tools/call", "mcp-name": "echo"}, "delete_records"),  # says one tool, runs another
    ({"mcp-protocol-version": "2026-07-28"}, "echo"),  # 2026-07-28 without the routing headers
    ({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}, "echo"),  # ... without Mcp-Name
])
async def test_routing_headers_that_disagree_with_the_body_get_400(
    headers: dict[str, str], body_name: str
) -> None:
    handler = _replica(FakePool(ENCLAVES))
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": body_name, "arguments": {}}})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    sent = {"authorization": "Bearer tok-alice", "content-type": "application/json", **headers}
    response = await handler.handle(HttpRequest("POST", PATH, sent, None, receive))
    assert response.status == 400
    assert _json(response)["error"]["code"] == -32020
    assert _json(response)["error"]["data"]["error_code"] == "HEADER_MISMATCH"


def test_routing_headers_that_agree_pass_and_older_revisions_may_omit_them() -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "données", "arguments": {}}}
    check_routing_headers({}, call)
    check_routing_headers({"mcp-method": "tools/call"}, call)
    check_routing_headers({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                           "mcp-name": encode_header_value("données")}, call)


def _route(**origins: Any) -> RouteConfig:
    return RouteConfig(name="r", upstream="http://u", audience="a", **origins)


@pytest.mark.parametrize("host, served", [
    ("127.0.0.1:8080", True), ("localhost:9", True), ("[::1]:8080", True), ("localhost", True),
    ("evil.example.com", False), ("evil.example.com:8080", False), ("127.0.0.1.evil.example:80", False),
])
def test_a_loopback_gateway_serves_only_loopback_names(host: str, served: bool) -> None:
    """DNS rebinding: a page on evil.example.com whose name now resolves to 127.0.0.1."""
    if served:
        check_host_and_origin({"host": host}, _route(), LOOPBACK_HOSTS)
        return
    with pytest.raises(CmcpError) as caught:
        check_host_and_origin({"host": host}, _route(), LOOPBACK_HOSTS)
    assert caught.value.code is Code.HOST_NOT_ALLOWED


def test_a_route_names_its_hosts_and_browser_origins() -> None:
    route = _route(allowed_hosts=("gw.example", "gw.example:*"), allowed_origins=("https://app.example",))
    check_host_and_origin({"host": "gw.example"}, route, LOOPBACK_HOSTS)
    check_host_and_origin({"host": "gw.example:8443", "origin": "https://app.example"}, route, ())
    for headers, code in (({"host": "127.0.0.1:80"}, Code.HOST_NOT_ALLOWED),
                          ({"host": "gw.example", "origin": "https://evil.example"}, Code.ORIGIN_NOT_ALLOWED),
                          ({"host": "gw.example", "origin": "null"}, Code.ORIGIN_NOT_ALLOWED)):
        with pytest.raises(CmcpError) as caught:
            check_host_and_origin(headers, route, ())
        assert caught.value.code is code
    check_host_and_origin({"host": "anything"}, _route(), ())  # no names given, not on loopback
    check_host_and_origin({}, _route(), LOOPBACK_HOSTS)  # no Host at all (HTTP/1.0): no browser sent it


@pytest.mark.parametrize("origin, served", [
    ("http://localhost:3000", True), ("http://127.0.0.1:8080", True), ("https://[::1]:9", True),
    ("http://localhost", True), ("http://evil.example.com", False),
    ("http://localhost.evil.example:80", False), ("null", False), ("file://localhost", False),
])
def test_a_loopback_gateway_serves_pages_on_this_machine_only(origin: str, served: bool) -> None:
    """No route origins named: on a loopback gateway a page on this machine may call it (as the
    MCP SDK allows), a page elsewhere may not; off loopback, no browser page may."""
    headers = {"host": "localhost:8080", "origin": origin}
    if served:
        check_host_and_origin(headers, _route(), LOOPBACK_HOSTS)
    else:
        with pytest.raises(CmcpError) as caught:
            check_host_and_origin(headers, _route(), LOOPBACK_HOSTS)
        assert caught.value.code is Code.ORIGIN_NOT_ALLOWED
    with pytest.raises(CmcpError):
        check_host_and_origin({"origin": origin}, _route(), ())


async def test_a_rebound_request_is_refused_before_anything_else() -> None:
    handler = _replica(FakePool(ENCLAVES))
    handler.default_hosts = LOOPBACK_HOSTS

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
                "more_body": False}

    headers = {"authorization": "Bearer tok-alice", "host": "evil.example.com", "origin": "http://evil.example.com"}
    response = await handler.handle(HttpRequest("POST", PATH, headers, None, receive))
    assert response.status == 421 and _json(response)["error"]["data"]["error_code"] == "HOST_NOT_ALLOWED"
