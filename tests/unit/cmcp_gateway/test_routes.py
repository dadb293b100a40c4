"""Routes at run time: which paths serve which route, and the cached upstream tool list."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.routes import SOLE_ROUTE_PATH, RouteRuntime, route_for, served_paths
from tests.helpers.gateway_stack import gateway_config

PINNED = frozenset({"sha256:" + "ab" * 32})


def _route(name: str) -> RouteConfig:
    return RouteConfig(name=name, upstream="http://127.0.0.1:9/mcp", audience="a",
                       enclaves=("127.0.0.1:1",), expected_bundle_hashes=PINNED)


class CountingUpstream:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer, self.calls = answer, 0

    async def request(
        self, method: str, params: dict[str, Any], *, idempotent: bool = False
    ) -> dict[str, Any]:
        assert method == "tools/list" and idempotent
        self.calls += 1
        return self.answer


def test_a_sole_route_is_also_served_at_mcp() -> None:
    one = gateway_config(_route("demo"))
    assert served_paths(one) == ["/mcp/demo", SOLE_ROUTE_PATH]
    two = dataclasses.replace(gateway_config(_route("a")), routes=(_route("a"), _route("b")))
    assert served_paths(two) == ["/mcp/a", "/mcp/b"]


def test_route_for_resolves_the_sole_route_alias_only_when_unambiguous() -> None:
    runtimes: dict[str, Any] = {"/mcp/a": "A"}
    assert route_for(runtimes, SOLE_ROUTE_PATH) == "A" and route_for(runtimes, "/mcp/a") == "A"
    runtimes["/mcp/b"] = "B"
    with pytest.raises(KeyError):
        route_for(runtimes, SOLE_ROUTE_PATH)


async def test_the_upstream_tool_list_is_cached() -> None:
    upstream = CountingUpstream({"result": {"tools": [{"name": "t"}]}})
    runtime = RouteRuntime(_route("demo"), pool=None, upstream=upstream)  # type: ignore[arg-type]
    assert await runtime.upstream_tools() == [{"name": "t"}]
    assert await runtime.upstream_tools() == [{"name": "t"}] and upstream.calls == 1


async def test_an_upstream_without_a_tool_list_is_unavailable() -> None:
    broken = CountingUpstream({"error": {}})
    runtime = RouteRuntime(_route("demo"), pool=None, upstream=broken)  # type: ignore[arg-type]
    with pytest.raises(CmcpError) as err:
        await runtime.upstream_tools()
    assert err.value.code is Code.UPSTREAM_UNAVAILABLE
