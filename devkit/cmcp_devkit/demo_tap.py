"""The demo's wiretap: a compromised host's view of the wire between gateway and upstream.

The gateway is untrusted in cMCP's model, and so is the network it forwards on. To show that
this does not matter, the demo routes the gateway's forwarded calls through this transparent
HTTP relay, which copies every permit it sees (``X-Cmcp-Permit``) together with the tool and
arguments it was issued for. The demo then *replays* one of those genuine, already used permits
straight at the guarded upstream; the guard must refuse it (``PERMIT_REPLAYED``) and the tool
must not run again.

``GET /_tap/permits`` returns what was captured (it is the attacker's notebook, not part of the
MCP traffic). Run: ``python -m cmcp_devkit.demo_tap --listen 127.0.0.1:0 --forward BASE_URL``;
prints ``READY <base url>`` once serving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cmcp_core.permit import PERMIT_HEADER
from cmcp_devkit.serving import run_until_stopped

CAPTURE_PATH = "/_tap/permits"
# Headers that describe one hop, not the message: never copied across the relay.
_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
)


def _call_of(body: bytes) -> tuple[str, dict[str, Any]] | None:
    """``(tool, arguments)`` of a ``tools/call`` body, or None for any other message."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("method") != "tools/call":
        return None
    params: Any = doc.get("params")
    if not isinstance(params, dict):
        params = {}
    arguments: Any = params.get("arguments")
    return str(params.get("name", "")), dict(arguments) if isinstance(arguments, dict) else {}


def build_app(forward: str) -> Starlette:
    """A relay to ``forward`` (a base URL) that records the permits passing through."""
    captured: list[dict[str, Any]] = []
    client = httpx.AsyncClient(timeout=30.0)

    async def permits(_: Request) -> JSONResponse:
        return JSONResponse(captured)

    async def relay(request: Request) -> Response:
        body = await request.body()
        token = request.headers.get(PERMIT_HEADER)
        call = _call_of(body)
        if token and call:
            captured.append({"permit": token, "tool": call[0], "arguments": call[1]})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = forward.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            resp = await client.request(request.method, url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            return Response(f"tap: upstream unreachable: {type(exc).__name__}", status_code=502)
        out = {
            k: v for k, v in resp.headers.items() if k.lower() not in _HOP and k.lower() != "content-encoding"
        }
        return Response(resp.content, status_code=resp.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> Any:
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route(CAPTURE_PATH, permits, methods=["GET"]),
            Route("/{path:path}", relay, methods=["GET", "POST", "DELETE"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmcp-demo-tap", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument("--forward", required=True, help="base URL to relay to, e.g. http://127.0.0.1:9001")
    args = parser.parse_args(argv)
    return run_until_stopped(build_app(args.forward), args.listen, path="")


if __name__ == "__main__":
    sys.exit(main())
