"""MCP over streamable HTTP, one request at a time: identity, limits, JSON-RPC, method dispatch.

Front-door rejections (credential, limits, parse, unknown session) answer at the HTTP status
the registry gives their code; per-call outcomes travel as JSON-RPC errors with HTTP 200. On a
route with ``authorization`` the agent is who its access token proves (:mod:`cmcp_gateway.oauth`;
``401`` with a challenge otherwise), and its RFC 9728 metadata is served on GET. The
handshake (``initialize``, or 2026-07-28's ``server/discover``) and ``ping`` are answered
here; ``tools/list`` and ``tools/call`` go to :mod:`cmcp_gateway.pipeline`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, NAME_BEARING_METHODS, decode_header_value
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from cmcp_core.digest import tagged_sha256
from cmcp_core.errors import REGISTRY, CmcpError, Code
from cmcp_core.mcp_target import GATED_METHODS, LIST_METHODS
from cmcp_gateway import jsonrpc, oauth, pipeline
from cmcp_gateway.auth import TokenStore, authenticate
from cmcp_gateway.config import Authorization, GatewayLimits, RouteConfig
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.limits import ConcurrencyLimiter, check_shape
from cmcp_gateway.metrics import REQUEST_SECONDS, REQUESTS
from cmcp_gateway.routes import RouteRuntime, route_for
from cmcp_gateway.sessions import McpSession, SessionTable
from cmcp_gateway.subscriptions import SessionEvents
from cmcp_gateway.transport import HttpRequest, Response
from cmcp_gateway.upstream import MODERN, SSE

log = logging.getLogger("cmcp.gateway")
SERVER_INFO = {"name": "cmcp-gateway", "version": "0.1.0"}
CAPABILITIES = {"tools": {"listChanged": False}}  # when the upstream cannot be asked
SESSION_HEADER = "mcp-session-id"


def relayed_capabilities(upstream: Mapping[str, Any], modern: bool) -> dict[str, Any]:
    """What the gateway offers agents: the upstream's tools, resources, prompts, completion and
    logging, each decided by the enclave. No list-change notifications (the lists are filtered
    per agent); resource subscriptions when a 2026-07-28 upstream offers them (heard through
    ``subscriptions/listen``, :class:`cmcp_gateway.pipeline.SessionEvents`)."""
    offered: dict[str, Any] = {"tools": {"listChanged": False}}
    resources = upstream.get("resources")
    if isinstance(resources, dict):
        subscribe = modern and resources.get("subscribe") is True
        offered["resources"] = {"listChanged": False, "subscribe": subscribe}
    if isinstance(upstream.get("prompts"), dict):
        offered["prompts"] = {"listChanged": False}
    for name in ("completions", "logging"):
        if isinstance(upstream.get(name), dict):
            offered[name] = {}
    return offered


class McpHandler:
    """Answers one HTTP request on a route's MCP endpoint (the :class:`~transport.AsgiFront` handler)."""

    def __init__(
        self,
        routes: Mapping[str, RouteRuntime],
        sessions: SessionTable,
        tokens: TokenStore | None,
        limits: GatewayLimits,
        limiter: ConcurrencyLimiter,
        metadata: Mapping[str, Authorization] | None = None,
        default_hosts: tuple[str, ...] = (),
    ) -> None:
        self.routes = routes  # filled at start-up
        self.metadata = metadata or {}  # RFC 9728 path -> the OAuth route it describes
        self.default_hosts = default_hosts  # Host values served by a route that names none
        self.sessions = sessions
        self.tokens = tokens
        self.limits = limits
        self.limiter = limiter

    async def handle(self, request: HttpRequest) -> Response:
        started = time.perf_counter()
        try:
            if request.method == "GET" and request.path in self.metadata:
                response = oauth.metadata_response(self.metadata[request.path])
                code = "ok"
            elif request.method == "GET" and request.path not in self.metadata:
                response = await self._get(request)
                code = "ok" if response.stream is not None else "get_not_offered"
            elif request.path in self.metadata:
                response = _GET_NOT_OFFERED
                code = "get_not_offered"
            else:
                response = await (
                    self._delete(request) if request.method == "DELETE" else self._post(request)
                )
                code = "ok"
        except FailedRequest as failed:
            response, code = failed.response, failed.code
        except CmcpError as exc:  # front-door errors before a JSON-RPC id is known
            response, code = jsonrpc.error_response(None, exc.code, exc.detail), str(exc.code)
        REQUESTS.labels(code=code).inc()
        REQUEST_SECONDS.observe(time.perf_counter() - started)
        return response

    async def _caller(self, request: HttpRequest, runtime: RouteRuntime) -> tuple[str, str]:
        """The agent (principal) and its access token ("" off OAuth routes). On an OAuth route
        the principal is the one an enclave of the route says the token proves."""
        auth = runtime.config.authorization
        if auth is None:
            return authenticate(request.headers, request.peer_cert, self.tokens, runtime.config.open), ""
        try:
            token = oauth.bearer_token(request.headers)
            if token is None:
                raise CmcpError(Code.UNAUTHENTICATED, "this route needs an OAuth access token")
            return await runtime.principals.principal(token, runtime.pool.authenticate), token
        except CmcpError as exc:
            if exc.code in oauth.TOKEN_REFUSED:
                raise oauth.refused(auth, exc) from exc
            raise

    async def _stateful_session(
        self, request: HttpRequest, runtime: RouteRuntime, agent: str, token: str = ""
    ) -> McpSession | None:
        """The request's ``Mcp-Session-Id`` session, adopted if this replica never saw it.

        Per the spec an unknown session is 404. Another agent's session, a closed one and one
        its enclave does not hold answer the same 404: they are indistinguishable to the agent."""
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return None
        session = self.sessions.find(session_id)
        if session is None:
            try:
                session = await self.sessions.adopt(runtime, session_id, agent, token)
            except CmcpError as exc:
                if exc.code in _NOT_ADOPTABLE:
                    raise _unknown_session() from exc
                raise
        if session.agent != agent or session.route != runtime.config.name:
            raise _unknown_session()
        session.last_used = time.monotonic()
        if token:
            session.access_token = token
        return session

    async def _get(self, request: HttpRequest) -> Response:
        """A session's stream of resource updates, where there is one to offer: a handshake-era
        session, an agent that takes SSE, a 2026-07-28 upstream; otherwise the spec's 405. One
        per session (a second is 409)."""
        runtime = route_for(self.routes, request.path)
        check_host_and_origin(request.headers, runtime.config, self.default_hosts)
        agent, token = await self._caller(request, runtime)
        session = await self._stateful_session(request, runtime, agent, token)
        if session is None or not _accepts_sse(request.headers) or not await runtime.upstream.is_modern():
            return _GET_NOT_OFFERED
        if session.listening:
            return Response(status=409)
        return Response(stream=SessionEvents(runtime, session), media_type=SSE,
                        headers=_session_header(session))

    async def _delete(self, request: HttpRequest) -> Response:
        runtime = route_for(self.routes, request.path)
        check_host_and_origin(request.headers, runtime.config, self.default_hosts)
        agent, token = await self._caller(request, runtime)
        session = await self._stateful_session(request, runtime, agent, token)
        if session is None:
            return jsonrpc.error_response(None, Code.MCP_INVALID_REQUEST, "DELETE needs Mcp-Session-Id")
        closed = await self.sessions.close(runtime, session, "client closed")
        # MCP clients ignore the body; raw clients and auditors get the session's Trust Record.
        return Response(orjson.dumps(closed) if closed else b"", media_type=jsonrpc.JSON)

    async def _post(self, request: HttpRequest) -> Response:
        runtime = route_for(self.routes, request.path)
        check_host_and_origin(request.headers, runtime.config, self.default_hosts)
        agent, token = await self._caller(request, runtime)
        with self.limiter.slot(agent):
            body = await request.body(self.limits.max_body_bytes)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise FailedRequest(
                    jsonrpc.error_response(
                        None, Code.MCP_PARSE_FAILURE, "Parse error", {"payload_hash": tagged_sha256(body)}
                    ),
                    str(Code.MCP_PARSE_FAILURE),
                ) from None
            check_shape(body, doc, self.limits)
            if _is_response(doc):
                return await self._answer(request, runtime, agent, token, doc)
            if (
                not isinstance(doc, dict)
                or doc.get("jsonrpc") != "2.0"
                or not isinstance(doc.get("method"), str)
            ):
                raise CmcpError(Code.MCP_INVALID_REQUEST, "expected one JSON-RPC 2.0 request object")
            check_routing_headers(request.headers, doc)
            request_id = doc.get("id")
            if "id" not in doc:
                return Response(status=202)  # notifications (initialized, cancelled): nothing to do
            if not (isinstance(request_id, str | int) and not isinstance(request_id, bool)):
                raise CmcpError(Code.MCP_INVALID_REQUEST, "id must be a string or an integer")
            params = doc.get("params")
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise CmcpError(Code.MCP_INVALID_REQUEST, "params must be an object")
            try:
                return await self._dispatch(request, runtime, agent, token, doc["method"], request_id, params)
            except CmcpError as exc:
                auth = runtime.config.authorization
                if auth is not None and exc.code in oauth.TOKEN_REFUSED:  # e.g. expired since cached
                    runtime.principals.forget(token)
                    raise oauth.refused(auth, exc) from exc
                raise FailedRequest(
                    Response(
                        jsonrpc.error_body(request_id, exc.code, exc.detail),
                        media_type=jsonrpc.JSON,
                        status=200 if exc.code not in _FRONT_DOOR else REGISTRY[exc.code].http,
                    ),
                    str(exc.code),
                ) from exc

    async def _answer(self, request: HttpRequest, runtime: RouteRuntime, agent: str, token: str,
                      doc: dict[str, Any]) -> Response:
        """An agent's answer to an input request the gateway put to it on a call's stream (its
        session's; the call waiting for it carries it upstream under a new permit)."""
        session = await self._stateful_session(request, runtime, agent, token)
        waiting = session.awaiting.pop(str(doc["id"]), None) if session is not None else None
        if waiting is None or waiting.done():
            raise CmcpError(Code.MCP_INVALID_REQUEST,
                            "this response answers no request the gateway is waiting on in this session")
        waiting.set_result(doc)
        return Response(status=202)

    async def _dispatch(
        self,
        request: HttpRequest,
        runtime: RouteRuntime,
        agent: str,
        token: str,
        method: str,
        request_id: str | int,
        params: dict[str, Any],
    ) -> Response:
        modern = request.headers.get("mcp-protocol-version") == MODERN
        if method == "initialize":
            opened = await self.sessions.open(runtime, agent, stateful=True, access_token=token)
            opened.client_capabilities = pipeline.relayable_capabilities(params.get("capabilities"))
            asked = params.get("protocolVersion")
            version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
            result = {"protocolVersion": version, "capabilities": await _capabilities(runtime),
                      "serverInfo": SERVER_INFO}
            log.info(
                "session opened",
                extra={
                    "session_id": opened.id,
                    "agent": agent,
                    "route": opened.route,
                    "enclave": opened.pin.address,
                },
            )
            return self._ok(request_id, result, opened)
        if method == "server/discover":
            return self._ok(
                request_id,
                {
                    "supportedVersions": [MODERN],
                    "capabilities": await _capabilities(runtime),
                    "resultType": "complete",
                    "ttlMs": 0,
                    "cacheScope": "private",
                    "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
                },
                None,
            )
        stateful = await self._stateful_session(request, runtime, agent, token)
        if method == "ping":
            return self._ok(request_id, {}, stateful)
        if method not in GATED_METHODS and method not in LIST_METHODS:
            raise CmcpError(Code.METHOD_NOT_FOUND, f"method {method!r} is not offered by this gateway")
        session = stateful if stateful is not None else await self.sessions.implicit(runtime, agent, token)
        session.last_used = time.monotonic()
        if token:
            session.access_token = token
        try:
            if method == "tools/list":
                result = await pipeline.list_tools(runtime, session)
            elif method in LIST_METHODS:
                result = await pipeline.list_items(runtime, session, request_id, method, params)
            else:
                answer = await pipeline.call(runtime, session, request_id, method, params,
                                             streaming=_accepts_sse(request.headers), modern=modern,
                                             shape=_shaper(modern))
                if answer.events is not None:
                    return Response(stream=answer.events, media_type=SSE, headers=_session_header(session))
                result = answer.result
        except CmcpError as exc:
            if exc.code in _SESSION_GONE and not session.stateful:
                self.sessions.forget(session)  # the next stateless request starts a fresh implicit session
            elif exc.code in _ENDED_AT_ENCLAVE:
                # Closed through another replica (or expired at the enclave): this table's entry
                # was stale. 404 as for any ended session, so the client opens a new one.
                self.sessions.forget(session)
                raise _unknown_session() from exc
            raise
        if modern and isinstance(result, dict) and method in LIST_METHODS:
            # a 2026-07-28 cacheable result: this agent's own, never shared
            result.setdefault("resultType", "complete")
            result.update(cacheScope="private", ttlMs=0)
        return self._ok(request_id, result, session)

    def _ok(self, request_id: str | int, result: Any, session: McpSession | None) -> Response:
        return Response(jsonrpc.result_body(request_id, result), media_type=jsonrpc.JSON,
                        headers=_session_header(session))


async def _capabilities(runtime: RouteRuntime) -> dict[str, Any]:
    try:
        return relayed_capabilities(await runtime.upstream.offered(), await runtime.upstream.is_modern())
    except CmcpError:  # the upstream is down: the handshake still works, calls fail closed later
        return CAPABILITIES


def _shaper(modern: bool) -> Callable[[Any], Any]:
    """How a gated request's result is finished for the agent: 2026-07-28 results say they are
    complete."""

    def shape(result: Any) -> Any:
        if modern and isinstance(result, dict):
            result.setdefault("resultType", "complete")
        return result

    return shape


def _is_response(doc: Any) -> bool:
    """A JSON-RPC response (the agent answering an input request), not a request."""
    return isinstance(doc, dict) and doc.get("jsonrpc") == "2.0" and "method" not in doc \
        and isinstance(doc.get("id"), str) and ("result" in doc or "error" in doc)


def _accepts_sse(headers: Mapping[str, str]) -> bool:
    return SSE in headers.get("accept", "")


def _session_header(session: McpSession | None) -> dict[str, str] | None:
    return {SESSION_HEADER: session.id} if session is not None and session.stateful else None


LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")


def check_host_and_origin(
    headers: Mapping[str, str], route: RouteConfig, default_hosts: tuple[str, ...]
) -> None:
    """DNS rebinding (MCP transport security): a web page that gets a browser to call the gateway
    under a name the attacker controls sends that name in ``Host`` and its own ``Origin``. The
    route serves only its ``allowed_hosts`` (default: ``default_hosts``, the loopback names when the
    gateway listens on loopback) and, from browsers, only its ``allowed_origins`` (default: pages
    served from ``default_hosts``; none when the gateway listens elsewhere). A request with
    no ``Host`` at all (HTTP/1.0) comes from no browser, and so from no rebound name."""
    hosts = route.allowed_hosts or default_hosts
    host = headers.get("host")
    if hosts and host is not None and not _host_served(host.lower(), hosts):
        raise CmcpError(Code.HOST_NOT_ALLOWED, f"this route does not serve Host {host!r}")
    origin = headers.get("origin")
    if origin is not None and not _origin_served(origin.lower().rstrip("/"), route.allowed_origins,
                                                 default_hosts):
        raise CmcpError(Code.ORIGIN_NOT_ALLOWED, f"this route does not serve Origin {origin!r}")


def _origin_served(origin: str, allowed: tuple[str, ...], default_hosts: tuple[str, ...]) -> bool:
    """``origin`` is listed; or the route lists none and it is a page served from one of
    ``default_hosts`` (on a loopback gateway: a page on this machine, as the MCP SDK allows)."""
    if allowed:
        return origin in allowed
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and bool(default_hosts) \
        and _host_served(authority, default_hosts)


def _host_served(host: str, allowed: tuple[str, ...]) -> bool:
    """``host`` (``name`` or ``name:port``) against entries ``name``, ``name:port`` or ``name:*``."""
    name, _, port = host.rpartition(":")
    if not port.isdigit():
        name = host
    return any(name == entry[:-2] if entry.endswith(":*") else host == entry for entry in allowed)


def check_routing_headers(headers: Mapping[str, str], doc: dict[str, Any]) -> None:
    """The routing headers must mirror the body (MCP 2026-07-28): a proxy or rate limiter in front
    that routes or authorizes on ``Mcp-Method`` / ``Mcp-Name`` must never see one operation while
    the gateway runs another. Required on 2026-07-28 requests; on older revisions a header that is
    sent must still agree. ``HEADER_MISMATCH`` (400) otherwise."""
    modern = headers.get("mcp-protocol-version") == MODERN
    method = doc["method"]
    sent_method = headers.get(MCP_METHOD_HEADER)
    if (sent_method is not None or modern) and sent_method != method:
        raise CmcpError(Code.HEADER_MISMATCH,
                        f"the {MCP_METHOD_HEADER} header does not match the body's method")
    name_key = NAME_BEARING_METHODS.get(method)
    params = doc.get("params")
    named = params.get(name_key) if name_key is not None and isinstance(params, dict) else None
    sent_name = headers.get(MCP_NAME_HEADER)
    if named is not None and (sent_name is not None or modern) and decode_header_value(sent_name) != named:
        raise CmcpError(Code.HEADER_MISMATCH,
                        f"the {MCP_NAME_HEADER} header does not match the body's {name_key!r}")


def _unknown_session() -> FailedRequest:
    return FailedRequest(
        jsonrpc.error_response(None, Code.SESSION_CLOSED, "unknown or closed session", status=404),
        str(Code.SESSION_CLOSED),
    )


_GET_NOT_OFFERED = Response(status=405, headers={"allow": "POST, DELETE"})
# The enclave's answers that make an id nobody's session for this agent (404, as unknown).
_NOT_ADOPTABLE = frozenset(
    {Code.SESSION_UNKNOWN, Code.SESSION_CLOSED, Code.SESSION_PRINCIPAL_MISMATCH, Code.MCP_INVALID_REQUEST}
)
_SESSION_GONE = frozenset({Code.SESSION_LOST, Code.SESSION_UNKNOWN, Code.SESSION_CLOSED})
_ENDED_AT_ENCLAVE = frozenset({Code.SESSION_UNKNOWN, Code.SESSION_CLOSED})
_FRONT_DOOR = frozenset(
    {
        Code.MCP_INVALID_REQUEST,
        Code.HEADER_MISMATCH,
        Code.HOST_NOT_ALLOWED,
        Code.ORIGIN_NOT_ALLOWED,
        Code.JSON_TOO_DEEP,
        Code.STRING_TOO_LONG,
        Code.BODY_TOO_LARGE,
        Code.UNAUTHENTICATED,
        Code.TOO_MANY_CONCURRENT,
    }
)
