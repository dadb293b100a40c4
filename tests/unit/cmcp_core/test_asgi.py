"""``cmcp_core.asgi.read_body``: a size-limited body, refused early, and a vanished client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cmcp_core.asgi import ClientGone, read_body
from cmcp_core.errors import CmcpError, Code


def _receiver(*messages: dict[str, Any]) -> tuple[Callable[[], Awaitable[dict[str, Any]]], list[int]]:
    queue = list(messages)
    taken = [0]

    async def receive() -> dict[str, Any]:
        taken[0] += 1
        return queue.pop(0)

    return receive, taken


def _chunk(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_joins_streamed_chunks() -> None:
    receive, _ = _receiver(_chunk(b"ab", True), _chunk(b"", True), _chunk(b"cd", False))
    assert await read_body(receive, limit=4) == b"abcd"


async def test_empty_body() -> None:
    receive, _ = _receiver({"type": "http.request"})
    assert await read_body(receive, limit=0) == b""


async def test_declared_length_over_limit_is_refused_before_reading() -> None:
    receive, taken = _receiver(_chunk(b"x", False))
    with pytest.raises(CmcpError) as info:
        await read_body(receive, limit=10, declared_length="11")
    assert info.value.code is Code.BODY_TOO_LARGE
    assert taken[0] == 0


async def test_non_numeric_declared_length_falls_back_to_counting() -> None:
    receive, _ = _receiver(_chunk(b"xyz", False))
    assert await read_body(receive, limit=3, declared_length="lots") == b"xyz"


async def test_streamed_body_over_limit_is_refused_at_the_chunk_that_crosses_it() -> None:
    receive, taken = _receiver(_chunk(b"aa", True), _chunk(b"bb", True), _chunk(b"cc", False))
    with pytest.raises(CmcpError) as info:
        await read_body(receive, limit=3, declared_length="1")  # an understated length is not trusted
    assert info.value.code is Code.BODY_TOO_LARGE
    assert taken[0] == 2


async def test_disconnect_raises_client_gone() -> None:
    receive, _ = _receiver(_chunk(b"a", True), {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        await read_body(receive, limit=100)
