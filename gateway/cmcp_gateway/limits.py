"""Request limits: body size, JSON nesting depth, string length, concurrent requests per agent.

Each breach has its own registered code. The depth and string checks are skipped when the raw
body already proves them (fewer brackets than the depth limit, shorter than the string limit),
which keeps the common small request free of a Python-level walk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.config import GatewayLimits


def check_shape(body: bytes, doc: Any, limits: GatewayLimits) -> None:
    """Raise ``JSON_TOO_DEEP`` / ``STRING_TOO_LONG`` for a parsed document that breaks the limits."""
    check_depth = body.count(b"[") + body.count(b"{") > limits.max_depth
    check_strings = len(body) > limits.max_string
    if not (check_depth or check_strings):
        return
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > limits.max_depth:
                raise CmcpError(Code.JSON_TOO_DEEP, f"JSON nests deeper than {limits.max_depth}")
            for key, item in value.items():
                if len(key) > limits.max_string:
                    raise CmcpError(Code.STRING_TOO_LONG, f"a key exceeds {limits.max_string} characters")
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > limits.max_depth:
                raise CmcpError(Code.JSON_TOO_DEEP, f"JSON nests deeper than {limits.max_depth}")
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and len(value) > limits.max_string:
            raise CmcpError(Code.STRING_TOO_LONG, f"a string exceeds {limits.max_string} characters")


class ConcurrencyLimiter:
    """In-flight request count per agent; over the limit is ``TOO_MANY_CONCURRENT``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, agent: str) -> Iterator[None]:
        current = self._inflight.get(agent, 0)
        if current >= self.limit:
            raise CmcpError(Code.TOO_MANY_CONCURRENT, f"agent has {current} requests in flight")
        self._inflight[agent] = current + 1
        try:
            yield
        finally:
            remaining = self._inflight[agent] - 1
            if remaining:
                self._inflight[agent] = remaining
            else:
                del self._inflight[agent]
