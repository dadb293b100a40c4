"""The gateway's hand-rolled HTTP/1.1 client against scripted raw-socket servers.

Each server answers one scripted byte string per request, so framing cases (Content-Length,
chunked with trailers, close-delimited, a keep-alive connection the server already closed,
garbage) are exercised exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from cmcp_gateway.http1 import Http1Client, HttpError


async def _serve(
    script: Callable[[int], bytes | None], close_after_reply: bool = False
) -> tuple[asyncio.Server, list[bytes]]:
    """``script(n)`` gives the reply to the n-th request on a connection; None closes it."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                seen.append(head + await reader.readexactly(length))
                reply = script(n)
                n += 1
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if close_after_reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]]]:
    servers: list[asyncio.Server] = []

    async def factory(
        script: Callable[[int], bytes | None], close_after_reply: bool = False
    ) -> tuple[Http1Client, list[bytes]]:
        server, seen = await _serve(script, close_after_reply)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return Http1Client(f"http://127.0.0.1:{port}/mcp?x=1"), seen

    yield factory  # type: ignore[misc]
    for server in servers:
        server.close()


JSON_OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def test_content_length_and_keep_alive(
    make: Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]],
) -> None:
    client, seen = await make(lambda n: JSON_OK)
    for _ in range(3):
        resp = await client.post(b'{"a":1}', {"x-cmcp-permit": "v1.a.b"}, 5)
        assert resp.status == 200 and resp.content == b'{"ok":true}'
        assert resp.headers["content-type"] == "application/json"
    assert len(client._idle) == 1  # one connection served all three
    assert seen[0].startswith(b"POST /mcp?x=1 HTTP/1.1\r\n") and b"x-cmcp-permit: v1.a.b" in seen[0]


async def test_chunked_with_trailers(
    make: Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]],
) -> None:
    body = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
        b"5;ext=1\r\ndata:\r\n7\r\n {}\n\n..\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    client, _ = await make(lambda n: body)
    resp = await client.post(b"{}", {}, 5)
    assert resp.content == b"data: {}\n\n.."
    assert client._idle  # the connection is reusable after the terminator


async def test_close_delimited(make: Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]]) -> None:
    client, _ = await make(lambda n: b"HTTP/1.0 200 OK\r\n\r\nhello", close_after_reply=True)
    resp = await client.post(b"{}", {}, 5)
    assert resp.content == b"hello"
    assert not client._idle  # read to EOF: never pooled


async def test_stale_keep_alive_is_resent_once(
    make: Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]],
) -> None:
    # first connection: one answer, then the server closes it while it idles in our pool
    client, seen = await make(lambda n: JSON_OK if n == 0 else None)
    assert (await client.post(b"1", {}, 5)).status == 200
    resp = await client.post(b"2", {}, 5)
    assert resp.status == 200
    assert [s.rsplit(b"\r\n\r\n", 1)[1] for s in seen] == [b"1", b"2", b"2"]


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_garbage_is_an_error(
    make: Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]], reply: bytes
) -> None:
    client, _ = await make(lambda n, reply=reply: reply, close_after_reply=True)
    with pytest.raises(HttpError):
        await client.post(b"{}", {}, 5)


async def test_nothing_listening_and_timeout(
    make: Callable[..., asyncio.Future[tuple[Http1Client, list[bytes]]]],
) -> None:
    from cmcp_devkit.ports import free_port

    with pytest.raises(HttpError):
        await Http1Client(f"http://127.0.0.1:{free_port()}/").post(b"{}", {}, 5)
    silent, _ = await make(lambda n: b"")  # accepts the request, never answers
    with pytest.raises(HttpError, match="no answer"):
        await silent.post(b"{}", {}, 0.2)


def test_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError):
        Http1Client("ftp://example/")
