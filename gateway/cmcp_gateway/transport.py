"""The gateway's HTTP front, a bare ASGI 3 app: exact-path routing, lifespan, headers, body, answers.

It knows HTTP and nothing of MCP: a request on a served path with an offered method goes to
one handler, which returns one :class:`Response`: a complete body, or a stream of chunks (the
upstream's SSE answer, relayed as it arrives). It
runs on uvicorn (httptools) like any ASGI 3 app. Why not Starlette:
docs/adr/0001-bare-asgi-front.md.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.types import Receive, Scope, Send

from cmcp_core.asgi import ClientGone, read_body
from cmcp_gateway.auth import PEER_CERT_STATE


class BodyStream(Protocol):
    """Chunks of a streamed body; ``aclose`` is called once sending ends, however it ends."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer: a status and one body, or a ``stream`` of chunks sent as they come.

    Sent as ``http.response.start`` (``headers`` first, then content-length and content-type,
    the order Starlette's ``Response`` used) and a single ``http.response.body``; a stream has no
    content-length and one ``http.response.body`` per chunk. Header names in ``headers`` must be
    lower-case, as ASGI requires.
    """

    body: bytes = b""
    status: int = 200
    media_type: str | None = None
    headers: Mapping[str, str] | None = None
    stream: BodyStream | None = None

    async def send(self, send: Send, receive: Receive | None = None) -> None:
        """Send it; a stream stops as soon as the client is gone, when ``receive`` says so."""
        extra = self.headers or {}
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        if self.stream is None:
            raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        if self.media_type is not None:
            raw.append((b"content-type", self.media_type.encode("latin-1")))
        if self.stream is None:
            await send({"type": "http.response.start", "status": self.status, "headers": raw})
            await send({"type": "http.response.body", "body": self.body})
            return
        stream = self.stream
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": raw})
            if receive is None:
                await _pump(stream, send)
            else:
                await _pump_until_gone(stream, send, receive)
        finally:
            await stream.aclose()


async def _pump_until_gone(stream: BodyStream, send: Send, receive: Receive) -> None:
    """Pump ``stream`` until it ends or the client is gone, whichever comes first.

    The client's leaving cancels the pump through an anyio cancel scope, whose cancellation is
    level-triggered: delivered again on every loop turn until the pump has left the scope. A
    single ``Task.cancel`` is edge-triggered: one ``except CancelledError`` or one
    ``asyncio.wait_for`` that loses the race to its own result anywhere in the stream's code
    swallows it, and a stream that loops (an idle GET stream's keepalives) then runs forever:
    it holds its upstream listen, and a graceful shutdown waits for it until its deadline.
    """
    with anyio.CancelScope() as scope:
        def client_left(watch: asyncio.Future[None]) -> None:
            scope.cancel("the client is gone")

        gone = asyncio.ensure_future(_disconnected(receive))
        gone.add_done_callback(client_left)
        try:
            await _pump(stream, send)
        finally:
            gone.remove_done_callback(client_left)
            gone.cancel()


async def _pump(stream: BodyStream, send: Send) -> None:
    async for chunk in stream:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _disconnected(receive: Receive) -> None:
    """Return once the client is gone (its request body was read before the answer began)."""
    while (await receive())["type"] != "http.disconnect":
        pass


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

    async def body(self, limit: int) -> bytes:
        """The whole body (``BODY_TOO_LARGE`` past ``limit``); ``ClientGone`` if the client left."""
        return await read_body(self.receive, limit, self.headers.get("content-length"))


Handler = Callable[[HttpRequest], Awaitable[Response]]


class Lifespan(Protocol):
    """What runs before the first request is served and after the last."""

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...


class AsgiFront:
    """ASGI 3: HTTP requests by exact path, and the server's lifespan."""

    def __init__(self, paths: Iterable[str], handle: Handler, lifespan: Lifespan) -> None:
        self._paths = frozenset(paths)
        self._handle = handle
        self._lifespan = lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._run_lifespan(receive, send)
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
                response = await self._handle(HttpRequest.from_scope(scope, receive))
            except ClientGone:
                return
        await response.send(send, receive)

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        """Start before serving, stop after (ASGI lifespan).

        A failure is reported as ``*.failed`` with the traceback (uvicorn logs it and exits), not
        raised. A failed start-up is not shut down, as under Starlette's lifespan context.
        """
        await receive()  # lifespan.startup
        try:
            await self._lifespan.startup()
        except Exception:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self._lifespan.shutdown()
        except Exception:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            return
        await send({"type": "lifespan.shutdown.complete"})


_METHODS = frozenset({"GET", "POST", "DELETE"})
# The bodies Starlette answered. Unlike its router: no 307 from /mcp/ to /mcp (404), HEAD is 405
# (Starlette passed it on to the handler as if a POST) and allow names only what is served.
_NOT_FOUND = Response(b"Not Found", 404, "text/plain; charset=utf-8")
_METHOD_NOT_ALLOWED = Response(
    b"Method Not Allowed", 405, "text/plain; charset=utf-8", {"allow": "POST, DELETE"}
)
