"""Standalone verifying reverse proxy for MCP servers not written in Python.

Every request goes through the same :class:`~cmcp_guard.middleware.GuardMiddleware` gate; what
passes is relayed to the upstream over a pooled httpx client, responses streamed back (so SSE
works). Hop-by-hop headers are dropped; the permit header is not passed on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from cmcp_core.errors import Code
from cmcp_core.permit import PERMIT_HEADER
from cmcp_guard.middleware import Guard, GuardMiddleware, error_body

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        PERMIT_HEADER.lower(),
    }
)


def build_proxy(upstream: str, guard: Guard, timeout: float = 60.0) -> ASGIApp:
    """An ASGI app relaying to ``upstream`` (base URL; the request path is appended)."""
    base = upstream.rstrip("/")
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state["http"] = httpx.AsyncClient(timeout=timeout)
        try:
            yield
        finally:
            await state["http"].aclose()

    async def relay(request: Request) -> Response:
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        # only a POST has a body in MCP, read by the guard under its limit; others relay none
        body = await request.body() if request.method == "POST" else None
        client = state["http"]
        try:
            upstream_request = client.build_request(request.method, url, headers=headers, content=body)
            resp = await client.send(upstream_request, stream=True)
        except httpx.HTTPError:
            return Response(
                error_body(Code.UPSTREAM_UNAVAILABLE, "upstream unreachable"),
                status_code=502,
                media_type="application/json",
            )
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(
            resp.aiter_raw(),
            status_code=resp.status_code,
            headers=out_headers,
            background=BackgroundTask(resp.aclose),
        )

    app = Starlette(
        # MCP streamable HTTP uses exactly these methods
        routes=[Route("/{path:path}", relay, methods=["GET", "POST", "DELETE"])],
        lifespan=lifespan,
    )
    return GuardMiddleware(app, guard)
