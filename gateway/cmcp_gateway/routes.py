"""A route at run time: its config, enclave pool, upstream client and cached tool list.

Each route is served at ``/mcp/<name>``, and the only route also at ``/mcp``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.config import Authorization, GatewayConfig, RouteConfig
from cmcp_gateway.enclave_pool import EnclavePool
from cmcp_gateway.oauth import TokenPrincipals
from cmcp_gateway.upstream import UpstreamClient

TOOLS_CACHE_SECONDS = 30.0
SOLE_ROUTE_PATH = "/mcp"


@dataclass
class RouteRuntime:
    config: RouteConfig
    pool: EnclavePool
    upstream: UpstreamClient
    tools: tuple[float, list[dict[str, Any]]] | None = None
    principals: TokenPrincipals = field(default_factory=TokenPrincipals)  # what tokens proved here

    async def upstream_tools(self) -> list[dict[str, Any]]:
        """The upstream's ``tools/list``, cached for ``TOOLS_CACHE_SECONDS``."""
        cached = self.tools
        if cached is not None and time.monotonic() - cached[0] < TOOLS_CACHE_SECONDS:
            return cached[1]
        message = await self.upstream.request("tools/list", {}, idempotent=True)
        tools = (message.get("result") or {}).get("tools")
        if not isinstance(tools, list):
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "upstream tools/list returned no tool list")
        self.tools = (time.monotonic(), tools)
        return tools


def served_paths(config: GatewayConfig) -> list[str]:
    paths = [r.path for r in config.routes]
    return [*paths, SOLE_ROUTE_PATH] if len(paths) == 1 else paths


def metadata_paths(config: GatewayConfig) -> dict[str, Authorization]:
    """Each OAuth route's RFC 9728 metadata path."""
    return {r.authorization.metadata_path: r.authorization for r in config.routes if r.authorization}


def route_for(routes: Mapping[str, RouteRuntime], path: str) -> RouteRuntime:
    """The route served at ``path`` (one of :func:`served_paths`), keyed by its own path."""
    if path == SOLE_ROUTE_PATH and len(routes) == 1:
        return next(iter(routes.values()))
    return routes[path]
