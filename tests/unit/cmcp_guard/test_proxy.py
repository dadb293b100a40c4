"""The standalone verifying reverse proxy: gate first, then relay; the permit never goes upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cmcp_core.permit import PERMIT_HEADER
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.ports import free_port
from cmcp_devkit.serving import server_config, serving
from cmcp_guard.proxy import build_proxy
from tests.helpers.gateway_stack import (
    AUDIENCE,
    MODERN_META,
    PERMIT_ARGS,
    PERMIT_TOOL,
    get_permit,
    make_guard,
)

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": PERMIT_TOOL}
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": PERMIT_TOOL, "arguments": PERMIT_ARGS, "_meta": MODERN_META}})


@dataclass
class Proxied:
    url: str
    seen: list[dict[str, str]]


@pytest.fixture
async def proxied(enclave: EnclaveProcess) -> AsyncIterator[Proxied]:
    """A recording upstream behind the real proxy, both served by uvicorn on loopback."""
    seen: list[dict[str, str]] = []

    async def record(request: Request) -> JSONResponse:
        seen.append({"path": f"{request.url.path}?{request.url.query}", **dict(request.headers)})
        return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}, headers={"x-upstream": "1"})

    upstream = Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST", "DELETE"])])
    up_port, guard_port = free_port(), free_port()
    proxy = build_proxy(f"http://127.0.0.1:{up_port}", make_guard([enclave], AUDIENCE))
    async with (
        serving(server_config(upstream, "127.0.0.1", up_port)),
        serving(server_config(proxy, "127.0.0.1", guard_port)),
    ):
        yield Proxied(f"http://127.0.0.1:{guard_port}", seen)


async def test_a_call_without_a_permit_never_reaches_the_upstream(proxied: Proxied) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(f"{proxied.url}/mcp", content=BODY, headers=HEADERS)
    assert resp.status_code == 403 and resp.json()["error"]["data"]["error_code"] == "PERMIT_MISSING"
    assert proxied.seen == []


async def test_a_permitted_call_is_relayed_with_path_and_query_but_without_the_permit(
    proxied: Proxied, enclave: EnclaveProcess
) -> None:
    permit = await get_permit(enclave.address)
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(f"{proxied.url}/mcp?trace=1", content=BODY,
                               headers={**HEADERS, PERMIT_HEADER: permit, "connection": "keep-alive"})
    assert resp.status_code == 200 and resp.json()["result"] == {"ok": True}
    assert resp.headers["x-upstream"] == "1"
    (seen,) = proxied.seen
    assert seen["path"] == "/mcp?trace=1" and seen["mcp-name"] == PERMIT_TOOL
    assert PERMIT_HEADER.lower() not in seen  # a permit is spent here; the upstream never sees it


async def test_an_unreachable_upstream_is_a_coded_502(enclave: EnclaveProcess) -> None:
    proxy = build_proxy(f"http://127.0.0.1:{free_port()}", make_guard([enclave], AUDIENCE))
    port = free_port()
    permit = await get_permit(enclave.address)
    async with serving(server_config(proxy, "127.0.0.1", port)), httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(f"http://127.0.0.1:{port}/mcp", content=BODY,
                               headers={**HEADERS, PERMIT_HEADER: permit})
    assert resp.status_code == 502 and resp.json()["error"]["data"]["error_code"] == "UPSTREAM_UNAVAILABLE"
