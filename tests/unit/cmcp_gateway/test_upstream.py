"""The gateway's raw MCP client to its upstream, against the official SDK server (both eras)."""

from __future__ import annotations

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.ports import free_port
from cmcp_devkit.upstream import run_upstream
from cmcp_gateway.upstream import LEGACY, MODERN, UpstreamClient, _parse_sse


async def test_it_negotiates_an_era_and_relays_results_verbatim() -> None:
    async with run_upstream(None) as up:
        client = UpstreamClient(up.url, timeout=10.0)
        try:
            listed = await client.request("tools/list", {}, idempotent=True)
            assert client.mode in (MODERN, LEGACY)
            names = {t["name"] for t in listed["result"]["tools"]}
            assert "web.search" in names
            called = await client.request("tools/call", {"name": "web.search", "arguments": {"query": "q"}})
            assert called["result"]["isError"] is False
            assert up.counter["web.search"] == 1
        finally:
            await client.aclose()


async def test_an_unreachable_upstream_is_a_coded_failure() -> None:
    client = UpstreamClient(f"http://127.0.0.1:{free_port()}/mcp", timeout=2.0)
    try:
        with pytest.raises(CmcpError) as err:
            await client.request("tools/list", {}, idempotent=True)
        assert err.value.code is Code.UPSTREAM_UNAVAILABLE
    finally:
        await client.aclose()


def test_sse_bodies_yield_the_response_for_the_request_only() -> None:
    body = (b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
            b'data: {"jsonrpc":"2.0","id":9,"result":{"other":1}}\n\n'  # another request's answer
            b'data: {"jsonrpc":"2.0","id":3,"result":{"ok":1}}\r\n\r\n')
    assert _parse_sse(body, 3) == {"jsonrpc": "2.0", "id": 3, "result": {"ok": 1}}
    with pytest.raises(ValueError, match="without the response"):
        _parse_sse(body, 4)
