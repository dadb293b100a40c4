"""The front door's bounds, played by an attacker on raw sockets against a real uvicorn server.

Each attack (oversized or too many headers, slowloris headers, a silent connection, a stalled
body) is refused with its coded status and the connection closed; an honest request, kept-alive
requests and a body far larger than the header limit in the same packet go through. The same
attacks against uvicorn's own protocol (the weakened front door) find the connection still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cmcp_core.http_front import BoundedHttpToolsProtocol, FrontDoorLimits, bounded

LIMITS = FrontDoorLimits(max_header_bytes=4096, max_headers=8, header_timeout_seconds=0.3,
                         body_timeout_seconds=0.3, max_connections=16)
WAIT = 10.0  # how long the attacker waits for an answer: far beyond every deadline above


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving(protocol: Any) -> AsyncIterator[int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        await task


refused: list[str] = []
BOUNDED = bounded(BoundedHttpToolsProtocol, LIMITS, refused.append)


async def answer(port: int, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send ``chunks`` (``pause`` s apart), then everything the server says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            with contextlib.suppress(ConnectionError):
                writer.write(chunk)
                await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def status_and_code(raw: bytes) -> tuple[int, str | None]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body).get("error_code") if body.startswith(b"{") else None


async def test_an_honest_request_and_a_kept_alive_one_go_through() -> None:
    async with serving(BOUNDED) as port:
        first = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        last = b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"
        raw = await answer(port, first + last)
    assert raw.count(b"HTTP/1.1 200") == 2 and raw.endswith(b"hi")


async def test_a_body_larger_than_the_header_limit_in_one_packet_is_not_mistaken_for_headers() -> None:
    body = b"x" * (LIMITS.max_header_bytes * 8)
    async with serving(BOUNDED) as port:
        head = b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        raw = await answer(port, head + body)
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(body)


@pytest.mark.parametrize(("attack", "reason"), [
    ((b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 64 * 1024,), "header_bytes"),
    ((b"GET / HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: y\r\n" % n for n in range(20)) + b"\r\n",),
     "header_count"),
])
async def test_oversized_headers_are_refused_431(attack: tuple[bytes, ...], reason: str) -> None:
    refused.clear()
    async with serving(BOUNDED) as port:
        raw = await answer(port, *attack)
    assert status_and_code(raw) == (431, "HEADERS_TOO_LARGE") and refused == [reason]


@pytest.mark.parametrize(("attack", "reason"), [
    ((b"GET / HTTP/1.1\r\n", b"host: x\r\n", b"x-slow: 1\r\n", b"x-slow: 2\r\n"), "header_timeout"),
    ((), "header_timeout"),  # connects and says nothing
    ((b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n", b"only part"), "body_timeout"),
])
async def test_slow_requests_are_cut_off_408(attack: tuple[bytes, ...], reason: str) -> None:
    refused.clear()
    async with serving(BOUNDED) as port:
        raw = await answer(port, *attack, pause=LIMITS.header_timeout_seconds / 4)
    assert status_and_code(raw) == (408, "REQUEST_TIMEOUT") and refused == [reason]


async def test_weakened_front_door_keeps_reading_oversized_and_slow_requests() -> None:
    """uvicorn's own protocol: the same attacks find the connection open long past our deadlines."""
    async with serving(HttpToolsProtocol) as port:
        for attack in ((b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 64 * 1024,),
                       (b"GET / HTTP/1.1\r\n", b"host: x\r\n")):
            with pytest.raises(TimeoutError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    for chunk in attack:
                        writer.write(chunk)
                    await writer.drain()
                    await asyncio.wait_for(reader.read(), LIMITS.header_timeout_seconds * 5)
                finally:
                    writer.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrontDoorLimits(max_headers=0)
    with pytest.raises(ValueError, match="positive"):
        FrontDoorLimits(body_timeout_seconds=0)
