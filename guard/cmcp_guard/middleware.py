"""ASGI middleware: refuse any MCP request without a valid permit before the app sees it.

Deny by default: every method the enclave decides (``tools/call``, ``resources/read``,
``prompts/get``, ``completion/complete``, ``logging/setLevel``...: :data:`GATED_METHODS`) needs
a permit for that method on that target, and the body the wrapped app receives for it is the
guard's own re-serialisation of what it verified, so no JSON parser difference (duplicate keys,
odd escapes) can make the app run other arguments than the permit names. Only the handshake and
discovery methods in :data:`OPEN_METHODS` pass without one; any other message (a method nobody
decides, a JSON-RPC response, a batch holding a gated request) is refused
(``PERMIT_METHOD_UNSUPPORTED``). So is a request that carries an
``Authorization`` header: the gateway never passes an agent's token on (MCP authorization
forbids token passthrough), so one here was put there by someone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cmcp_core.asgi import ClientGone, read_body
from cmcp_core.errors import REGISTRY, CmcpError, Code
from cmcp_core.mcp_target import GATED_METHODS, LIST_METHODS, Target, call_target
from cmcp_core.permit import PERMIT_HEADER, Permit
from cmcp_guard.check import PermitChecker
from cmcp_guard.metrics import ADMITTED, REJECTIONS
from cmcp_guard.trust import TrustStore

log = logging.getLogger("cmcp.guard")
_PERMIT_HEADER = PERMIT_HEADER.lower().encode("latin-1")
_AUTHORIZATION = b"authorization"
# What passes without a permit: the handshake, liveness and discovery, which the gateway itself
# sends (cmcp_gateway.upstream) and filters per agent; they disclose names, no tool's or
# resource's data.
OPEN_METHODS = frozenset({
    "initialize", "notifications/initialized", "notifications/cancelled", "ping", "server/discover",
    *LIST_METHODS,
})
DEFAULT_MAX_BODY = 4 * 1024 * 1024


def error_body(code: Code, detail: str, request_id: Any = None) -> bytes:
    """JSON-RPC error document carrying the registered code (what the gateway relays)."""
    info = REGISTRY[code]
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": info.jsonrpc, "message": detail, "data": {"error_code": str(code)}},
        }
    )


async def send_error(send: Send, code: Code, detail: str, request_id: Any = None) -> None:
    body = error_body(code, detail, request_id)
    await send(
        {
            "type": "http.response.start",
            "status": REGISTRY[code].http,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class Rejection(CmcpError):
    """A refused call, with the JSON-RPC id to answer it under."""

    def __init__(self, code: Code, detail: str, request_id: str | int | None) -> None:
        super().__init__(code, detail)
        self.request_id = request_id


class Guard:
    """The permit gate; shared by :class:`GuardMiddleware` and the reverse proxy."""

    def __init__(
        self,
        checker: PermitChecker,
        trust: TrustStore | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.checker = checker
        self.trust = trust
        self.max_body = max_body
        self.clock = clock

    async def inspect(self, scope: Scope, body: bytes) -> bytes:
        """Return the body to pass on, or raise :class:`Rejection` with the code and request id."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Rejection(Code.MCP_PARSE_FAILURE, "body is not JSON", None) from None
        request_id = doc.get("id") if isinstance(doc, dict) else None
        try:
            return await self._inspect(scope, body, doc)
        except CmcpError as exc:
            raise Rejection(
                exc.code, exc.detail, request_id if isinstance(request_id, str | int) else None
            ) from exc

    async def _inspect(self, scope: Scope, body: bytes, doc: Any) -> bytes:
        if isinstance(doc, list):
            if any(isinstance(m, dict) and m.get("method") in GATED_METHODS for m in doc):
                raise CmcpError(Code.MCP_INVALID_REQUEST, "a gated method inside a batch is refused")
            for message in doc:
                _open_method(message)
            return body
        method = doc.get("method") if isinstance(doc, dict) else None
        if method not in GATED_METHODS:
            _open_method(doc)
            return body
        target = call_target(method, doc.get("params"))
        token = header(scope, _PERMIT_HEADER)
        try:
            permit = self._check(token, target)
        except CmcpError as exc:
            if exc.code is not Code.PERMIT_UNTRUSTED_KEY or self.trust is None:
                raise
            if not await self.trust.refresh_for_unknown_key():
                raise
            permit = self._check(token, target)
        ADMITTED.inc()
        log.info(
            "permit admitted",
            extra={"call_id": permit.cid, "session_id": permit.sid, "method": method,
                   "tool": target.name, "kid": permit.kid},
        )
        return orjson.dumps(doc)

    def _check(self, token: str | None, target: Target) -> Permit:
        return self.checker.check(token, target.name, target.arguments, now=self.clock(),
                                  method=target.method, digest=target.digest)


def _open_method(message: Any) -> None:
    """A message that may pass without a permit, or ``PERMIT_METHOD_UNSUPPORTED``."""
    method = message.get("method") if isinstance(message, dict) else None
    if method not in OPEN_METHODS:
        raise CmcpError(Code.PERMIT_METHOD_UNSUPPORTED,
                        f"{method!r} needs a permit and the guard has no permit check for it; refused"
                        if isinstance(method, str) else "a message without a method is refused")


class GuardMiddleware:
    """Wrap any ASGI MCP app (e.g. ``MCPServer.streamable_http_app()``)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        trust = self.guard.trust

        async def wrapped() -> Message:
            message = await receive()
            if trust is not None and message["type"] == "lifespan.startup":
                await trust.start()
            elif trust is not None and message["type"] == "lifespan.shutdown":
                await trust.stop()
            return message

        await self.app(scope, wrapped, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] == "http" and header(scope, _AUTHORIZATION) is not None:
            REJECTIONS.labels(code=str(Code.AGENT_TOKEN_FORWARDED)).inc()
            log.warning("call refused", extra={"code": str(Code.AGENT_TOKEN_FORWARDED)})
            await send_error(send, Code.AGENT_TOKEN_FORWARDED,
                             "an Authorization header reached the guard; agents' tokens stay at the gateway")
            return
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.guard.max_body, header(scope, b"content-length"))
            new_body = await self.guard.inspect(scope, body)
        except ClientGone:
            return  # nobody is left to answer, and the app never saw the call
        except CmcpError as exc:
            REJECTIONS.labels(code=str(exc.code)).inc()
            log.warning("call refused", extra={"code": str(exc.code), "detail": exc.detail})
            await send_error(send, exc.code, exc.detail, getattr(exc, "request_id", None))
            return
        if new_body is not body:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(new_body)).encode()))
            scope = {**scope, "headers": headers}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": new_body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
