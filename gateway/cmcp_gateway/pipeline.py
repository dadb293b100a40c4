"""The requests the enclave gates: list results filtered by it, and the pipeline of every
gated method (``tools/call``, ``resources/read``, ``prompts/get``... :mod:`cmcp_core.mcp_target`).

Per gated request: the session's pinned, attested enclave ``Decide`` -> verify the signed
decision echoes this exact request (in :meth:`EnclavePool.decide`) -> forward exactly what the
permit binds (plus the agent's ``_meta``) with the permit -> relay the upstream's result
verbatim -> report the outcome (queued, after the answer). Every failure on the decision path
answers a coded JSON-RPC error and forwards nothing; per-call outcomes travel as JSON-RPC errors
with HTTP 200.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from mcp_types import LOG_LEVEL_META_KEY

from cmcp_core.bundle import template_pattern
from cmcp_core.digest import b64url
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import LIST_METHODS, args_digest, call_target, forwarded_params
from cmcp_core.permit import PERMIT_HEADER
from cmcp_gateway import jsonrpc
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.enclave_pool import Decision
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.metrics import DECISION_SECONDS, UPSTREAM_SECONDS
from cmcp_gateway.oauth import www_authenticate
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import McpSession
from cmcp_gateway.transport import Response
from cmcp_gateway.upstream import ReplyStream

log = logging.getLogger("cmcp.gateway")


async def list_tools(runtime: RouteRuntime, session: McpSession) -> dict[str, Any]:
    """The upstream's tools, only those the enclave lets this session's agent see."""
    allowed = set(await runtime.pool.list_tools(session.pin, session.id, session.agent, session.access_token))
    tools = await runtime.upstream_tools()
    return {"tools": [t for t in tools if isinstance(t, dict) and t.get("name") in allowed]}


async def list_items(
    runtime: RouteRuntime, session: McpSession, request_id: str | int, method: str, params: dict[str, Any]
) -> Any:
    """A page of the upstream's resources, resource templates or prompts, only the entries the
    enclave lets this session's agent see (a resource also when a visible template matches it);
    the rest of the upstream's result (``nextCursor``, ``_meta``) is relayed as it is."""
    _, key, name_key = LIST_METHODS[method]
    visible = await runtime.pool.list_tools(
        session.pin, session.id, session.agent, session.access_token, method=method)
    names = set(visible)
    # A resource is shown when a visible template matches it (a URI never holds a brace; a template does)
    templates = [template_pattern(n) for n in visible if "{" in n] if method == "resources/list" else []
    message = await runtime.upstream.request(method, _list_params(params), idempotent=True)
    if "error" in message:
        raise _upstream_error(message, {"session_id": session.id}, request_id)
    result = message.get("result")
    items = result.get(key) if isinstance(result, dict) else None
    if not isinstance(result, dict) or not isinstance(items, list):
        raise CmcpError(Code.UPSTREAM_UNAVAILABLE, f"upstream {method} returned no {key} list")

    def shown(item: Any) -> bool:
        named = item.get(name_key) if isinstance(item, dict) else None
        return isinstance(named, str) and (named in names or any(p.fullmatch(named) for p in templates))

    return {**result, key: [item for item in items if shown(item)]}


def _list_params(params: dict[str, Any]) -> dict[str, Any]:
    """What a list request may carry upstream: its page cursor and ``_meta``."""
    return {k: params[k] for k in ("cursor", "_meta") if k in params}


async def call(
    runtime: RouteRuntime, session: McpSession, request_id: str | int, method: str, params: dict[str, Any],
    *, streaming: bool = False, shape: Callable[[Any], Any] = lambda result: result,
) -> Answer:
    """The upstream's answer to an allowed request to a gated ``method``; ``FailedRequest`` for a
    denied or refused one. With ``streaming`` (the agent takes SSE) an upstream that streams is
    relayed as it writes (:attr:`Answer.events`); ``shape`` finishes a result for the agent."""
    target = call_target(method, params)
    tool, arguments = target.name, target.arguments
    digest = args_digest(arguments)
    call_id = uuid.uuid4().hex
    route = runtime.config
    started = time.perf_counter()
    decision = await runtime.pool.decide(
        session.pin,
        session_id=session.id,
        call_id=call_id,
        principal=session.agent,
        method=method,
        tool=tool,
        arguments_json=orjson.dumps(arguments),
        args_digest=digest,
        audience=route.audience,
        access_token=session.access_token,
    )
    DECISION_SECONDS.observe(time.perf_counter() - started)
    doc = decision.document
    ids = {"call_id": call_id, "session_id": session.id}
    if doc["effective"] != "allow":
        code = _decision_code(doc)
        log.info(
            "call denied",
            extra={**ids, "agent": session.agent, "method": method, "tool": tool, "args_digest": digest,
                   "code": str(code)},
        )
        raise FailedRequest(
            Response(
                jsonrpc.error_body(
                    request_id,
                    code,
                    f"denied by policy: {doc['reason_code']}",
                    {**ids, "decision": _signed(decision)},
                    rpc_code=-32000,
                ),
                media_type=jsonrpc.JSON,
                **_scope_challenge(route, doc, code),
            ),
            str(code),
        )
    advisory = doc["decision"] == "deny"
    if method == "logging/setLevel" and await runtime.upstream.per_request_logging():
        # A 2026-07-28 upstream has no session level to set: the level the enclave allowed is
        # carried on each of this session's requests instead (_with_log_level).
        session.log_level = str(target.arguments["level"])
        _report_later(runtime, session, call_id, {}, "")
        return Answer(shape({}))
    upstream_started = time.perf_counter()

    def finish(message: dict[str, Any]) -> Any:
        """The upstream's response for the agent: outcome reported, advisory said, logged."""
        UPSTREAM_SECONDS.observe(time.perf_counter() - upstream_started)
        if method == "logging/setLevel" and "result" in message:
            session.log_level = str(target.arguments["level"])
        if "error" in message:
            failed = _upstream_error(message, ids, request_id)
            _report_later(runtime, session, call_id, None, failed.code)
            log.warning("upstream refused call",
                        extra={**ids, "method": method, "tool": tool, "code": failed.code})
            raise failed
        result = message.get("result")
        _report_later(runtime, session, call_id, result, "")
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
                    "method": method,
                    "tool": tool,
                    "args_digest": digest,
                    "would_have_denied": advisory,
                },
            )
        return shape(result)

    try:
        forwarded = _with_log_level(forwarded_params(target, params), session)
        reply = await runtime.upstream.call(method, forwarded, {PERMIT_HEADER: decision.permit},
                                            streaming=streaming)
    except CmcpError as exc:
        _report_later(runtime, session, call_id, None, str(exc.code))
        raise
    if isinstance(reply, ReplyStream):
        return Answer(events=Relay(reply, finish, request_id, ids,
                                   lambda code: _report_later(runtime, session, call_id, None, code)))
    return Answer(finish(reply))


@dataclass
class Answer:
    """A gated request's answer: the upstream's (shaped) result, or, when the upstream streams
    and the agent takes SSE, ``events``: each message as an SSE event, as the upstream writes
    it, ending with the response. (An agent that does not take SSE gets the result alone.)"""

    result: Any = None
    events: Relay | None = None


def _sse_event(message: bytes) -> bytes:
    return b"event: message\r\ndata: " + message + b"\r\n\r\n"


class Relay:
    """The upstream's stream to the agent's: notifications as they come, then the response (or
    the coded error that ended the stream). :meth:`aclose` (the front calls it whatever happens)
    closes the upstream's stream and, when the agent left before the response, reports
    ``AGENT_GONE`` as the call's outcome."""

    def __init__(self, reply: ReplyStream, finish: Callable[[dict[str, Any]], Any], request_id: str | int,
                 ids: dict[str, str], report_failure: Callable[[str], None]) -> None:
        self._reply = reply
        self._finish = finish
        self._request_id = request_id
        self._ids = ids
        self._report_failure = report_failure
        self._answered = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._reply.messages():
                if "id" not in message:
                    yield _sse_event(orjson.dumps(message))
                    continue
                self._answered = True
                try:
                    result = self._finish(message)
                except FailedRequest as failed:
                    yield _sse_event(failed.response.body)
                    return
                yield _sse_event(jsonrpc.result_body(self._request_id, result))
                return
        except CmcpError as exc:
            self._answered = True
            self._report_failure(str(exc.code))
            log.warning("upstream stream failed", extra={**self._ids, "code": str(exc.code)})
            yield _sse_event(jsonrpc.error_body(self._request_id, exc.code, exc.detail, self._ids))

    async def aclose(self) -> None:
        if not self._answered:
            self._answered = True
            self._report_failure(str(Code.AGENT_GONE))
        await self._reply.aclose()


def _with_log_level(params: dict[str, Any], session: McpSession) -> dict[str, Any]:
    """A handshake-era agent asks for log messages once, with ``logging/setLevel``; a 2026-07-28
    upstream sends them only to requests that opt in through ``_meta``: carry the session's level
    on each request the agent did not stamp itself."""
    if not session.log_level:
        return params
    meta = params.get("_meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta.setdefault(LOG_LEVEL_META_KEY, session.log_level)
    return {**params, "_meta": meta}


def _upstream_error(
    message: dict[str, Any], ids: dict[str, str], request_id: str | int | None = None
) -> FailedRequest:
    """The upstream's JSON-RPC error, relayed with our ids; coded by the guard's registered code
    when the guard refused (any other error is the server's own, ``jsonrpc:<code>``)."""
    raw_error = message["error"]
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    raw_data = error.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    upstream_code = str(data.get("error_code") or f"jsonrpc:{error.get('code')}")
    body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {**error, "data": {**data, **ids}}})
    return FailedRequest(Response(body, media_type=jsonrpc.JSON), upstream_code)


def _report_later(
    runtime: RouteRuntime, session: McpSession, call_id: str, result: Any, error_code: str
) -> None:
    """Report the outcome after answering: the decision is already in the chain.

    Queued at the pool; it rides on the next Decide or the CloseSession to that enclave
    (or goes alone shortly after), see :mod:`cmcp_gateway.outcomes`.
    """
    runtime.pool.report(session.pin, session.id, call_id, result, error_code)


def _scope_challenge(route: RouteConfig, doc: dict[str, Any], code: Code) -> dict[str, Any]:
    """A deny for a scope the token lacks is ``403 insufficient_scope`` naming the scopes the
    tool requires (the enclave's signed deny says which), so the client can step up."""
    if code is not Code.INSUFFICIENT_SCOPE or route.authorization is None:
        return {}
    errors = doc.get("errors", ())
    scope = next((str(e["scope"]) for e in errors if isinstance(e, dict) and "scope" in e), None)
    challenge = www_authenticate(route.authorization, error="insufficient_scope", scope=scope)
    return {"status": 403, "headers": {"www-authenticate": challenge}}


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
