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

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from mcp_types import CLIENT_CAPABILITIES_META_KEY, LOG_LEVEL_META_KEY

from cmcp_core.bundle import template_pattern
from cmcp_core.digest import b64url
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import (
    LIST_METHODS,
    LISTEN,
    STATEFUL_METHODS,
    Target,
    ask_target,
    call_target,
    forwarded_params,
)
from cmcp_core.permit import PERMIT_HEADER
from cmcp_gateway import jsonrpc
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.enclave_pool import Decision
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.metrics import DECISION_SECONDS, UPSTREAM_SECONDS
from cmcp_gateway.oauth import www_authenticate
from cmcp_gateway.relay import Relay, is_input_required, sse_event
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


FOLLOW_METHODS = frozenset({"resources/subscribe", "resources/unsubscribe"})
LISTEN_SECONDS = 900.0  # a listen stream upstream lasts at most this long (then it is re-opened)
MAX_INPUT_ROUNDS = 8  # an upstream still asking after this many answers is cut off
# what an agent can be asked that the gateway relays (each ask decided by the enclave)
RELAYED_CLIENT_CAPABILITIES = ("sampling", "elicitation", "roots")


def relayable_capabilities(declared: Any) -> dict[str, Any]:
    """The part of an agent's declared client capabilities an upstream may use through us."""
    if not isinstance(declared, dict):
        return {}
    return {k: declared[k] for k in RELAYED_CLIENT_CAPABILITIES if isinstance(declared.get(k), dict)}


async def call(
    runtime: RouteRuntime, session: McpSession, request_id: str | int, method: str, params: dict[str, Any],
    *, streaming: bool = False, modern: bool = False, shape: Callable[[Any], Any] = lambda result: result,
) -> Answer:
    """The upstream's answer to an allowed request to a gated ``method``; ``FailedRequest`` for a
    denied or refused one. With ``streaming`` (the agent takes SSE) an upstream that streams is
    relayed as it writes (:attr:`Answer.events`); ``shape`` finishes a result for the agent.

    An upstream that needs the agent's input (a 2026-07-28 ``InputRequiredResult``) has each of
    its input requests decided by the enclave first. A 2026-07-28 agent (``modern``) then gets
    the result as it is and repeats its request with the answers; a handshake-era agent is asked
    each request on this call's stream, and the gateway repeats the request upstream with its
    answers, under a new permit that binds them (:class:`Conversation`)."""
    target = call_target(method, params)
    if method == LISTEN and not streaming:
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"{LISTEN} answers with a stream: accept text/event-stream")
    meta = params.get("_meta")
    declared = meta.get(CLIENT_CAPABILITIES_META_KEY) if modern and isinstance(meta, dict) else None
    capabilities = relayable_capabilities(declared if modern else session.client_capabilities)
    answer = await _round(runtime, session, request_id, target, params, streaming, shape, capabilities)
    if method not in STATEFUL_METHODS:
        return answer
    if answer.events is None and not is_input_required(answer.result):
        return answer
    conversation = Conversation(runtime, session, request_id, target, answer, modern,
                                lambda given: _round(runtime, session, request_id, given, params, streaming,
                                                     shape, capabilities))
    if answer.events is not None:
        return Answer(events=conversation)
    if modern:
        await conversation.let_ask(answer.result)
        return answer
    if not streaming:
        raise CmcpError(Code.UPSTREAM_REQUEST_NOT_RELAYED,
                        "the upstream needs the agent's input, and the agent takes no SSE stream "
                        "to be asked on")
    return Answer(events=conversation)


async def _round(
    runtime: RouteRuntime, session: McpSession, request_id: str | int, target: Target, params: dict[str, Any],
    streaming: bool, shape: Callable[[Any], Any], capabilities: dict[str, Any],
) -> Answer:
    """One decided, permitted request upstream and its answer (a multi-round trip has several)."""
    method, tool = target.method, target.name
    digest = target.digest
    call_id = uuid.uuid4().hex
    route = runtime.config
    started = time.perf_counter()
    decision = await _decide(runtime, session, call_id, target, digest)
    DECISION_SECONDS.observe(time.perf_counter() - started)
    doc = decision.document
    ids = {"call_id": call_id, "session_id": session.id}
    if doc["effective"] != "allow":
        raise _denied(route, session, request_id, decision, ids, target, digest)
    advisory = doc["decision"] == "deny"
    if method == "logging/setLevel" and await runtime.upstream.is_modern():
        # A 2026-07-28 upstream has no session level to set: the level the enclave allowed is
        # carried on each of this session's requests instead (_with_log_level).
        session.log_level = str(target.arguments["level"])
        _report_later(runtime, session, call_id, {}, "")
        return Answer(shape({}))
    if method in FOLLOW_METHODS and await runtime.upstream.is_modern():
        # Nor has it resources/subscribe: the session keeps what its agent follows, and its GET
        # stream hears the updates through subscriptions/listen (SessionEvents)
        session.follow(target.name, method == "resources/subscribe")
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
                                            streaming=streaming, client_capabilities=capabilities,
                                            lasting=LISTEN_SECONDS if method == LISTEN else None)
    except CmcpError as exc:
        _report_later(runtime, session, call_id, None, str(exc.code))
        raise
    if isinstance(reply, ReplyStream):
        return Answer(events=Relay(reply, finish, request_id, ids,
                                   lambda code: _report_later(runtime, session, call_id, None, code),
                                   hold_input=method in STATEFUL_METHODS, listen=method == LISTEN))
    return Answer(finish(reply))


async def _decide(runtime: RouteRuntime, session: McpSession, call_id: str, target: Target,
                  digest: str) -> Decision:
    return await runtime.pool.decide(
        session.pin,
        session_id=session.id,
        call_id=call_id,
        principal=session.agent,
        method=target.method,
        tool=target.name,
        arguments_json=orjson.dumps(target.arguments),
        args_digest=digest,
        audience=runtime.config.audience,
        access_token=session.access_token,
        input_json=orjson.dumps(target.input) if target.input is not None else b"",
    )


def _denied(route: RouteConfig, session: McpSession, request_id: str | int, decision: Decision,
            ids: dict[str, str], target: Target, digest: str) -> FailedRequest:
    """The agent's answer to a request the enclave denied: the coded error with the signed deny."""
    doc = decision.document
    code = _decision_code(doc)
    log.info(
        "call denied",
        extra={**ids, "agent": session.agent, "method": target.method, "tool": target.name,
               "args_digest": digest, "code": str(code)},
    )
    return FailedRequest(
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


@dataclass
class Answer:
    """A gated request's answer: the upstream's (shaped) result, or, when the upstream streams
    and the agent takes SSE, ``events``: each message as an SSE event, as the upstream writes
    it, ending with the response. (An agent that does not take SSE gets the result alone.)"""

    result: Any = None
    events: Relay | Conversation | None = None


async def unbroken(work: Awaitable[Any]) -> Any:
    """``work`` (a decision and what follows it) run to its end even if the stream awaiting it is
    cancelled because its agent left: cut mid-way, a decision half-written to the enclave's
    shared ``DecideStream`` makes gRPC cancel that stream, failing every other call on it. An
    answer that arrives for nobody is closed."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_close_unread)
        raise


def _close_unread(task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    answer = task.result()
    if isinstance(answer, Answer) and answer.events is not None:
        _closing.add(closing := asyncio.ensure_future(answer.events.aclose()))
        closing.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()  # closes under way (a task is kept until it is done)


class Conversation:
    """A stateful request whose upstream may need the agent's input (MCP 2026-07-28 multi-round
    trip), as the agent's SSE stream: the upstream's notifications, then, while its answer is an
    ``InputRequiredResult``, each input request decided by the enclave and, for a handshake-era
    agent, put to it on this stream as a JSON-RPC request whose answer it POSTs; the request is
    then repeated upstream with the answers under a new permit binding them. A denied input
    request ends the call with the signed deny and never reaches the agent."""

    def __init__(self, runtime: RouteRuntime, session: McpSession, request_id: str | int, target: Target,
                 first: Answer, modern: bool, next_round: Callable[[Target], Any]) -> None:
        self._runtime = runtime
        self._session = session
        self._request_id = request_id
        self._target = target
        self._answer = first
        self._modern = modern
        self._next_round = next_round
        self._asked: list[str] = []

    async def let_ask(self, pending: dict[str, Any]) -> None:
        """Have the enclave decide every input request of ``pending``; ``FailedRequest`` on a deny."""
        requests = pending.get("inputRequests") or {}
        if not isinstance(requests, dict):
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "the upstream's inputRequests is not an object")
        for key, request in requests.items():
            ask = ask_target(self._target, str(key), request)
            call_id = uuid.uuid4().hex
            digest = ask.digest
            decision = await _decide(self._runtime, self._session, call_id, ask, digest)
            if decision.document["effective"] != "allow":
                raise _denied(self._runtime.config, self._session, self._request_id, decision,
                              {"call_id": call_id, "session_id": self._session.id}, ask, digest)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for rounds in range(MAX_INPUT_ROUNDS + 1):
                answer = self._answer
                if isinstance(answer.events, Relay):
                    async for event in answer.events:
                        yield event
                    pending = answer.events.input_required
                    if pending is None:
                        return
                elif is_input_required(answer.result):
                    pending = answer.result
                else:
                    yield sse_event(jsonrpc.result_body(self._request_id, answer.result))
                    return
                if rounds == MAX_INPUT_ROUNDS:  # checked before asking: the last answer was read
                    break
                await unbroken(self.let_ask(pending))
                if self._modern:  # it answers by repeating its request (call_target binds the answers)
                    yield sse_event(jsonrpc.result_body(self._request_id, pending))
                    return
                answers: dict[str, Any] = {}
                async for event in self._ask_agent(pending, answers):
                    yield event
                given = {"inputResponses": answers}
                if isinstance(pending.get("requestState"), str):
                    given["requestState"] = pending["requestState"]
                repeated = dataclasses.replace(self._target, input=given)
                self._answer = await unbroken(self._next_round(repeated))
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE,
                            f"the upstream still needs input after {MAX_INPUT_ROUNDS} rounds")
        except FailedRequest as failed:
            yield sse_event(failed.response.body)
        except CmcpError as exc:
            log.warning("call ended", extra={"session_id": self._session.id, "code": str(exc.code)})
            yield sse_event(jsonrpc.error_body(self._request_id, exc.code, exc.detail,
                                                {"session_id": self._session.id}))

    async def _ask_agent(self, pending: dict[str, Any], answers: dict[str, Any]) -> AsyncIterator[bytes]:
        """Put each input request to the agent on this stream; fill ``answers`` as it replies."""
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        for key, request in (pending.get("inputRequests") or {}).items():
            rpc_id = f"cmcp-input-{uuid.uuid4().hex}"
            waiting[str(key)] = self._session.awaiting[rpc_id] = loop.create_future()
            self._asked.append(rpc_id)
            yield sse_event(orjson.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": request["method"],
                                           "params": request.get("params") or {}}))
        timeout = self._runtime.upstream.timeout
        for key, future in waiting.items():
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation
                    reply = await future
            except TimeoutError:
                raise CmcpError(Code.AGENT_GONE, f"the agent did not answer the upstream's input request "
                                f"within {timeout:g} s") from None
            if not isinstance(reply.get("result"), dict):
                raise CmcpError(Code.MCP_INVALID_REQUEST,
                                "the agent answered the upstream's input request with an error")
            answers[key] = reply["result"]

    async def aclose(self) -> None:
        for rpc_id in self._asked:
            self._session.awaiting.pop(rpc_id, None)
        if self._answer.events is not None:
            await self._answer.events.aclose()


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
