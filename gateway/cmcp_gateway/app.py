"""The gateway's MCP streamable-HTTP endpoint (bare ASGI 3): identity, limits, sessions, calls.

Per ``tools/call``: authenticate -> limits -> the session's pinned, attested enclave ``Decide``
-> verify the signed decision echoes this exact call -> forward ``name`` + ``arguments`` with
the permit -> relay the upstream's result verbatim -> ``Complete`` (in the background, after
the answer). Every failure on the decision path answers a coded JSON-RPC error and forwards
nothing. Front-door rejections (credential, limits, parse, unknown session) use the HTTP status
the registry gives their code; per-call outcomes travel as JSON-RPC errors with HTTP 200.

Why bare ASGI: the endpoint is a handful of exact paths, three methods and one JSON body per
request, yet Starlette's layers (error and exception middleware, router, ``Request`` and URL
parsing, ``Response.__call__``, send wrappers) plus uvicorn's proxy-headers middleware were the
largest share of the gateway's own per-request cost. Measured on the 2-core bench machine, a
``ping`` on a keep-alive connection took 165 µs of gateway CPU through Starlette and takes
116 µs here (p50 latency 206 -> 159 µs). :meth:`Gateway.__call__` does the same routing,
lifespan and header reading directly on the ASGI scope; it still runs on uvicorn (httptools)
like any ASGI 3 app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from starlette.types import ASGIApp, Receive, Scope, Send

from cmcp_core.asgi import ClientGone, read_body
from cmcp_core.attestation import AttestPolicy
from cmcp_core.digest import b64url, tagged_sha256
from cmcp_core.errors import REGISTRY, CmcpError, Code
from cmcp_core.permit import PERMIT_HEADER
from cmcp_core.tool_call import args_digest, tool_call_target
from cmcp_gateway import jsonrpc
from cmcp_gateway.auth import PEER_CERT_STATE, TokenStore, authenticate
from cmcp_gateway.config import GatewayConfig, RouteConfig
from cmcp_gateway.enclaves import Decision, EnclavePool, Pin, Refresher
from cmcp_gateway.jsonrpc import Response
from cmcp_gateway.limits import ConcurrencyLimiter, check_shape
from cmcp_gateway.metrics import DECISION_SECONDS, REQUEST_SECONDS, REQUESTS, UPSTREAM_SECONDS
from cmcp_gateway.upstream import MODERN, UpstreamClient

log = logging.getLogger("cmcp.gateway")
SERVER_INFO = {"name": "cmcp-gateway", "version": "0.1.0"}
CAPABILITIES = {"tools": {"listChanged": False}}
TOOLS_CACHE_SECONDS = 30.0
SESSION_HEADER = "mcp-session-id"


@dataclass
class Session:
    id: str
    agent: str
    route: str
    pin: Pin
    stateful: bool
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class RouteRuntime:
    config: RouteConfig
    pool: EnclavePool
    upstream: UpstreamClient
    tools: tuple[float, list[dict[str, Any]]] | None = None


@dataclass(slots=True)
class HttpRequest:
    """What the gateway reads from an ASGI HTTP scope, and the channel its body arrives on."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; the first of repeated headers wins
    peer_cert: dict[str, Any] | None  # put there by auth.PeerCertHttpToolsProtocol (mTLS)
    receive: Receive

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> HttpRequest:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        peer = scope.get("state", {}).get(PEER_CERT_STATE)
        return cls(scope["method"], scope["path"], headers, peer, receive)


class Outcome(Exception):
    """A finished request: the response to send and the code to count it under."""

    def __init__(self, response: Response, code: str) -> None:
        super().__init__(code)
        self.response = response
        self.code = code


def _payload_hash(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class Gateway:
    def __init__(self, config: GatewayConfig, tokens: TokenStore | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.limits = config.limits
        self.limiter = ConcurrencyLimiter(config.limits.max_concurrent_per_agent)
        self.sessions: dict[str, Session] = {}
        self.implicit: dict[tuple[str, str], str] = {}
        self.routes: dict[str, RouteRuntime] = {}
        self.refresher = Refresher(config.attest_refresh_seconds)
        self._paths = frozenset(self.routes_paths())

    # --- lifecycle --------------------------------------------------------------------------
    async def startup(self) -> None:
        for route in self.config.routes:
            policy = AttestPolicy(
                allow_simulated=self.config.allow_simulated,
                expected_bundle_hashes=route.expected_bundle_hashes,
            )
            pool = EnclavePool(route.name, policy, self.limits.decide_timeout_seconds)
            runtime = RouteRuntime(
                route, pool, UpstreamClient(route.upstream, self.limits.upstream_timeout_seconds)
            )
            self.routes[route.path] = runtime
            if route.kubernetes is not None:
                from cmcp_core.route_status import McpRouteSource

                source = McpRouteSource(route.kubernetes)
                await pool.set_endpoints(await source.endpoints())

                async def discover(pool: EnclavePool = pool, source: McpRouteSource = source) -> None:
                    await pool.set_endpoints(await source.endpoints())

                self.refresher.jobs.append(discover)
            else:
                await pool.set_endpoints(route.enclaves)
            self.refresher.jobs.append(pool.refresh)
        self.refresher.jobs.append(self.reap_idle)
        self.refresher.start()

    async def shutdown(self) -> None:
        await self.refresher.stop()
        for runtime in self.routes.values():
            await runtime.pool.close()
        for runtime in self.routes.values():
            await runtime.upstream.aclose()

    def app(self) -> ASGIApp:
        """The gateway is its own ASGI app (:meth:`__call__`)."""
        return self

    def routes_paths(self) -> list[str]:
        paths = [r.path for r in self.config.routes]
        return [*paths, "/mcp"] if len(paths) == 1 else paths

    def _runtime(self, path: str) -> RouteRuntime:
        if path == "/mcp" and len(self.routes) == 1:
            return next(iter(self.routes.values()))
        return self.routes[path]

    # --- sessions ---------------------------------------------------------------------------
    def _new_session(self, runtime: RouteRuntime, agent: str, stateful: bool) -> Session:
        if len(self.sessions) >= self.limits.max_sessions:
            raise CmcpError(Code.SESSION_LIMIT, "the gateway holds its maximum of sessions")
        session_id = uuid.uuid4().hex
        session = Session(session_id, agent, runtime.config.name, runtime.pool.pick(session_id), stateful)
        self.sessions[session_id] = session
        return session

    def _implicit_session(self, runtime: RouteRuntime, agent: str) -> Session:
        """Stateless requests (2026-07-28 clients, or no Mcp-Session-Id) share one per-agent session."""
        key = (runtime.config.name, agent)
        session_id = self.implicit.get(key)
        session = self.sessions.get(session_id) if session_id else None
        if session is None:
            session = self._new_session(runtime, agent, stateful=False)
            self.implicit[key] = session.id
        return session

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        key = (session.route, session.agent)
        if self.implicit.get(key) == session.id:
            del self.implicit[key]

    async def _close(self, runtime: RouteRuntime, session: Session, reason: str) -> dict[str, Any] | None:
        """Close at the enclave; returns the session's signed Trust Record summary (None on failure)."""
        self._forget(session)
        try:  # close_session carries the queued outcomes first: the Trust Record covers every call
            resp = await runtime.pool.close_session(session.pin, session.id, reason)
        except CmcpError as exc:
            log.warning("session close failed", extra={"session_id": session.id, "code": str(exc.code)})
            return None
        record = bytes(resp.trust_record_json)
        if self.config.trust_record_dir:  # untrusted storage is fine: the record is signed
            path = Path(self.config.trust_record_dir, f"{session.id}.json")
            await asyncio.to_thread(path.write_bytes, record)
        log.info(
            "session closed",
            extra={
                "session_id": session.id,
                "chain_tip": resp.chain_tip,
                "entries": resp.entries,
                "reason": reason,
                "trust_record_digest": tagged_sha256(record),
            },
        )
        return {
            "session_id": session.id,
            "chain_tip": resp.chain_tip,
            "entries": resp.entries,
            "trust_record": orjson.loads(record) if record else None,
        }

    async def reap_idle(self) -> None:
        horizon = time.monotonic() - self.limits.session_idle_seconds
        for session in [s for s in self.sessions.values() if s.last_used < horizon]:
            runtime = next(r for r in self.routes.values() if r.config.name == session.route)
            await self._close(runtime, session, "idle")

    # --- ASGI entry -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI 3: HTTP requests by exact path, and the server's lifespan."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: nothing is offered (what Starlette's router answered too)
            await send({"type": "websocket.close", "code": 1000, "reason": ""})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Exact path, then method (as Starlette's router did); a client gone mid-body gets nothing."""
        if scope["path"] not in self._paths:
            response = _NOT_FOUND
        elif scope["method"] not in _METHODS:
            response = _METHOD_NOT_ALLOWED
        else:
            try:
                response = await self.handle(HttpRequest.from_scope(scope, receive))
            except ClientGone:
                return
        await response.send(send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start the enclave pools and refresher before serving, stop them after (ASGI lifespan).

        A failure is reported as ``*.failed`` with the traceback (uvicorn logs it and exits), not
        raised. A failed start-up is not shut down, as under Starlette's lifespan context.
        """
        await receive()  # lifespan.startup
        try:
            await self.startup()
        except Exception:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self.shutdown()
        except Exception:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            return
        await send({"type": "lifespan.shutdown.complete"})

    # --- HTTP -------------------------------------------------------------------------------
    async def handle(self, request: HttpRequest) -> Response:
        started = time.perf_counter()
        try:
            if request.method == "GET":
                # No server-initiated stream is offered; the spec's answer for that is 405.
                response = _GET_NOT_OFFERED
                code = "get_not_offered"
            else:
                response = await (
                    self._delete(request) if request.method == "DELETE" else self._post(request)
                )
                code = "ok"
        except Outcome as outcome:
            response, code = outcome.response, outcome.code
        except CmcpError as exc:  # front-door errors before a JSON-RPC id is known
            response, code = jsonrpc.error_response(None, exc.code, exc.detail), str(exc.code)
        REQUESTS.labels(code=code).inc()
        REQUEST_SECONDS.observe(time.perf_counter() - started)
        return response

    def _agent(self, request: HttpRequest, runtime: RouteRuntime) -> str:
        return authenticate(request.headers, request.peer_cert, self.tokens, runtime.config.open)

    def _stateful_session(self, request: HttpRequest, runtime: RouteRuntime, agent: str) -> Session | None:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return None
        session = self.sessions.get(session_id)
        if session is None or session.agent != agent or session.route != runtime.config.name:
            # Per the spec an unknown session is 404; another agent's session is indistinguishable.
            raise Outcome(
                jsonrpc.error_response(None, Code.SESSION_CLOSED, "unknown or closed session", status=404),
                str(Code.SESSION_CLOSED),
            )
        session.last_used = time.monotonic()
        return session

    async def _delete(self, request: HttpRequest) -> Response:
        runtime = self._runtime(request.path)
        agent = self._agent(request, runtime)
        session = self._stateful_session(request, runtime, agent)
        if session is None:
            return jsonrpc.error_response(None, Code.MCP_INVALID_REQUEST, "DELETE needs Mcp-Session-Id")
        closed = await self._close(runtime, session, "client closed")
        # MCP clients ignore the body; raw clients and auditors get the session's Trust Record.
        return Response(orjson.dumps(closed) if closed else b"", media_type=jsonrpc.JSON)

    async def _post(self, request: HttpRequest) -> Response:
        runtime = self._runtime(request.path)
        agent = self._agent(request, runtime)
        with self.limiter.slot(agent):
            body = await read_body(
                request.receive, self.limits.max_body_bytes, request.headers.get("content-length")
            )
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise Outcome(
                    jsonrpc.error_response(
                        None, Code.MCP_PARSE_FAILURE, "Parse error", {"payload_hash": _payload_hash(body)}
                    ),
                    str(Code.MCP_PARSE_FAILURE),
                ) from None
            check_shape(body, doc, self.limits)
            if (
                not isinstance(doc, dict)
                or doc.get("jsonrpc") != "2.0"
                or not isinstance(doc.get("method"), str)
            ):
                raise CmcpError(Code.MCP_INVALID_REQUEST, "expected one JSON-RPC 2.0 request object")
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
                return await self._dispatch(request, runtime, agent, doc["method"], request_id, params)
            except CmcpError as exc:
                raise Outcome(
                    Response(
                        jsonrpc.error_body(request_id, exc.code, exc.detail),
                        media_type=jsonrpc.JSON,
                        status=200 if exc.code not in _FRONT_DOOR else REGISTRY[exc.code].http,
                    ),
                    str(exc.code),
                ) from exc

    async def _dispatch(
        self,
        request: HttpRequest,
        runtime: RouteRuntime,
        agent: str,
        method: str,
        request_id: str | int,
        params: dict[str, Any],
    ) -> Response:
        modern = request.headers.get("mcp-protocol-version") == MODERN
        if method == "initialize":
            opened = self._new_session(runtime, agent, stateful=True)
            asked = params.get("protocolVersion")
            version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
            result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO}
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
                    "capabilities": CAPABILITIES,
                    "resultType": "complete",
                    "ttlMs": 0,
                    "cacheScope": "private",
                    "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
                },
                None,
            )
        stateful = self._stateful_session(request, runtime, agent)
        if method == "ping":
            return self._ok(request_id, {}, stateful)
        if method not in ("tools/list", "tools/call"):
            raise CmcpError(Code.METHOD_NOT_FOUND, f"method {method!r} is not offered by this gateway")
        session = stateful if stateful is not None else self._implicit_session(runtime, agent)
        session.last_used = time.monotonic()
        try:
            if method == "tools/list":
                result = await self._tools_list(runtime, session)
            else:
                result = await self._tools_call(runtime, session, request_id, params)
        except CmcpError as exc:
            if exc.code in _SESSION_GONE and not session.stateful:
                self._forget(session)  # the next stateless request starts a fresh implicit session
            raise
        if modern and isinstance(result, dict):
            result.setdefault("resultType", "complete")
            if method == "tools/list":  # 2026-07-28 cacheable result: per-agent, never shared
                result.update(cacheScope="private", ttlMs=0)
        return self._ok(request_id, result, session)

    def _ok(self, request_id: str | int, result: Any, session: Session | None) -> Response:
        headers = {SESSION_HEADER: session.id} if session is not None and session.stateful else None
        return Response(jsonrpc.result_body(request_id, result), media_type=jsonrpc.JSON, headers=headers)

    # --- methods ----------------------------------------------------------------------------
    async def _upstream_tools(self, runtime: RouteRuntime) -> list[dict[str, Any]]:
        cached = runtime.tools
        if cached is not None and time.monotonic() - cached[0] < TOOLS_CACHE_SECONDS:
            return cached[1]
        message = await runtime.upstream.request("tools/list", {}, idempotent=True)
        tools = (message.get("result") or {}).get("tools")
        if not isinstance(tools, list):
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "upstream tools/list returned no tool list")
        runtime.tools = (time.monotonic(), tools)
        return tools

    async def _tools_list(self, runtime: RouteRuntime, session: Session) -> dict[str, Any]:
        allowed = set(await runtime.pool.list_tools(session.pin, session.id, session.agent))
        tools = await self._upstream_tools(runtime)
        return {"tools": [t for t in tools if isinstance(t, dict) and t.get("name") in allowed]}

    async def _tools_call(
        self, runtime: RouteRuntime, session: Session, request_id: str | int, params: dict[str, Any]
    ) -> Any:
        tool, arguments = tool_call_target(params)
        digest = args_digest(arguments)
        call_id = uuid.uuid4().hex
        route = runtime.config
        started = time.perf_counter()
        decision = await runtime.pool.decide(
            session.pin,
            session_id=session.id,
            call_id=call_id,
            principal=session.agent,
            method="tools/call",
            tool=tool,
            arguments_json=orjson.dumps(arguments),
            args_digest=digest,
            audience=route.audience,
        )
        DECISION_SECONDS.observe(time.perf_counter() - started)
        doc = decision.document
        ids = {"call_id": call_id, "session_id": session.id}
        if doc["effective"] != "allow":
            code = _decision_code(doc)
            log.info(
                "call denied",
                extra={**ids, "agent": session.agent, "tool": tool, "args_digest": digest, "code": str(code)},
            )
            raise Outcome(
                Response(
                    jsonrpc.error_body(
                        request_id,
                        code,
                        f"denied by policy: {doc['reason_code']}",
                        {**ids, "decision": _signed(decision)},
                        rpc_code=-32000,
                    ),
                    media_type=jsonrpc.JSON,
                ),
                str(code),
            )
        advisory = doc["decision"] == "deny"
        upstream_started = time.perf_counter()
        try:
            message = await runtime.upstream.request(
                "tools/call", {"name": tool, "arguments": arguments}, {PERMIT_HEADER: decision.permit}
            )
        except CmcpError as exc:
            self._complete_later(runtime, session, call_id, None, str(exc.code))
            raise
        UPSTREAM_SECONDS.observe(time.perf_counter() - upstream_started)
        if "error" in message:
            raw_error = message["error"]
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            raw_data = error.get("data")
            data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
            # A guard refusal carries our registered code; any other error is the tool server's own.
            upstream_code = str(data.get("error_code") or f"jsonrpc:{error.get('code')}")
            self._complete_later(runtime, session, call_id, None, upstream_code)
            log.warning("upstream refused call", extra={**ids, "tool": tool, "code": upstream_code})
            body = orjson.dumps(
                {"jsonrpc": "2.0", "id": request_id, "error": {**error, "data": {**data, **ids}}}
            )
            raise Outcome(Response(body, media_type=jsonrpc.JSON), upstream_code)
        result = message.get("result")
        self._complete_later(runtime, session, call_id, result, "")
        if advisory and isinstance(result, dict):
            raw_meta = result.get("_meta")
            meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
            result["_meta"] = {
                **meta,
                "cmcp": {
                    "would_have_denied": True,
                    "reason_code": doc["reason_code"],
                    "mode": doc["mode"],
                    "call_id": call_id,
                },
            }
        if not (advisory and doc["mode"] == "silent"):
            log.info(
                "call forwarded",
                extra={
                    **ids,
                    "agent": session.agent,
                    "tool": tool,
                    "args_digest": digest,
                    "would_have_denied": advisory,
                },
            )
        return result

    def _complete_later(
        self, runtime: RouteRuntime, session: Session, call_id: str, result: Any, error_code: str
    ) -> None:
        """Report the outcome after answering: the decision is already in the chain.

        Queued at the pool; it rides on the next Decide or the CloseSession to that enclave
        (or goes alone shortly after), see :mod:`cmcp_gateway.enclaves`.
        """
        runtime.pool.report(session.pin, session.id, call_id, result, error_code)


_METHODS = frozenset({"GET", "POST", "DELETE"})
# The bodies Starlette answered. Unlike its router: no 307 from /mcp/ to /mcp (404), HEAD is 405
# (Starlette passed it on to the handler as if a POST) and allow names only what is served.
_NOT_FOUND = Response(b"Not Found", 404, "text/plain; charset=utf-8")
_METHOD_NOT_ALLOWED = Response(
    b"Method Not Allowed", 405, "text/plain; charset=utf-8", {"allow": "POST, DELETE"}
)
_GET_NOT_OFFERED = Response(status=405, headers={"allow": "POST, DELETE"})
_SESSION_GONE = frozenset({Code.SESSION_LOST, Code.SESSION_UNKNOWN, Code.SESSION_CLOSED})
_FRONT_DOOR = frozenset(
    {
        Code.MCP_INVALID_REQUEST,
        Code.JSON_TOO_DEEP,
        Code.STRING_TOO_LONG,
        Code.BODY_TOO_LARGE,
        Code.UNAUTHENTICATED,
        Code.TOO_MANY_CONCURRENT,
    }
)


def _decision_code(doc: dict[str, Any]) -> Code:
    try:
        return Code(doc["reason_code"])
    except ValueError:
        return Code.POLICY_DENY


def _signed(decision: Decision) -> dict[str, str]:
    """The enclave's decision as signed bytes, so the agent (or an auditor) can re-verify it."""
    return {
        "document": decision.decision_json.decode(),
        "signature": b64url(decision.signature),
        "kid": str(decision.document["kid"]),
    }


def build(config: GatewayConfig, tokens: TokenStore | None = None) -> tuple[Gateway, ASGIApp]:
    gateway = Gateway(config, tokens)
    return gateway, gateway.app()
