"""A minimal pooled HTTP/1.1 client for the gateway's hot path to the upstream.

It does the one exchange the gateway needs (request with a body, response with
Content-Length, chunked or close-delimited body) on keep-alive connections, and nothing more.
Anything it cannot parse is an error (the caller maps it to ``UPSTREAM_UNAVAILABLE``), never a
guess. Why not httpx: docs/adr/0002-pooled-http11-upstream-client.md.

A request is retried once on a fresh connection only when a *reused* idle connection turns out
to be closed before a single response byte arrived (the usual keep-alive race). Even if the
server had read that request, the retry cannot run a tool twice: the permit it carries is
single-use at the guard.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


class HttpError(Exception):
    """The exchange failed or the response was not well-formed HTTP/1.1."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _StaleConnection(HttpError):
    pass


class HttpStream:
    """A response whose body is read as it arrives. The connection goes back to the pool only
    when the body was read to its end on a keep-alive connection; :meth:`aclose` otherwise
    closes it (a half-read body cannot be reused)."""

    def __init__(self, client: Http1Client, conn: _Conn, status: int, headers: dict[str, str],
                 keep: bool, expires: float) -> None:
        self.status = status
        self.headers = headers
        self._client = client
        self._conn: _Conn | None = conn
        self._keep = keep
        self._expires = expires
        self._done = False

    async def _read_all(self) -> bytes:
        """The whole body (a Content-Length body, the usual JSON answer, in one read), under the
        caller's timeout."""
        headers = self.headers
        if "content-length" not in headers or "chunked" in headers.get("transfer-encoding", "").lower():
            return b"".join([chunk async for chunk in self.chunks()])
        assert self._conn is not None, "the stream is closed"
        length = int(headers["content-length"])
        if not 0 <= length <= MAX_BODY_BYTES:
            raise HttpError("content-length out of range")
        try:
            content = await self._conn[0].readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise HttpError(f"malformed or truncated response: {exc}") from exc
        self._done = True
        return content

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked, Content-Length or close-delimited), within
        the exchange's deadline; ``HttpError`` when it is cut short, too large or too slow."""
        assert self._conn is not None, "the stream is closed"
        reader = self._conn[0]
        try:
            async with asyncio.timeout_at(self._expires):
                async for chunk in self._body(reader):
                    yield chunk
        except TimeoutError as exc:
            raise HttpError("the response body did not end in time") from exc
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            raise HttpError(f"malformed or truncated response: {exc}") from exc
        self._done = True

    async def _body(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        headers, total = self.headers, 0
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while (size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)) != 0:
                total += size
                if total > MAX_BODY_BYTES:
                    raise HttpError("chunked body too large")
                yield await reader.readexactly(size)
                await reader.readexactly(2)
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY_BYTES:
                raise HttpError("content-length out of range")
            yield await reader.readexactly(length)
        elif not (self.status in (204, 304) or 100 <= self.status < 200):
            self._keep = False
            while chunk := await reader.read(65536):
                total += len(chunk)
                if total > MAX_BODY_BYTES:
                    raise HttpError("body too large")
                yield chunk

    async def aclose(self) -> None:
        if self._conn is not None:
            self._client._release(self._conn, self._done and self._keep)
            self._conn = None


class Http1Client:
    def __init__(self, url: str, *, max_idle: int = 64, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc.rpartition("@")[2]
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.max_idle = max_idle
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        return await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=MAX_HEADER_BYTES)

    def _request_bytes(self, body: bytes, headers: dict[str, str]) -> bytes:
        head = [f"POST {self.path} HTTP/1.1", f"host: {self.authority}", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items() if "\r" not in v and "\n" not in v]
        try:
            return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        except UnicodeEncodeError as exc:
            raise HttpError("a header value is not latin-1") from exc

    async def post(self, body: bytes, headers: dict[str, str], deadline: float) -> HttpResponse:
        """One exchange, the whole response read within ``deadline`` seconds."""
        answer = await self.exchange(body, headers, deadline)
        assert isinstance(answer, HttpResponse)
        return answer

    async def exchange(
        self, body: bytes, headers: dict[str, str], deadline: float,
        *, stream_if: Callable[[int, Mapping[str, str]], bool] | None = None,
    ) -> HttpResponse | HttpStream:
        """Send the request and read the response head, all within ``deadline`` seconds. A response
        ``stream_if`` picks comes back as an :class:`HttpStream` (its body read as it arrives, by
        the same deadline); any other is read whole under the one timeout (the hot path)."""
        request = self._request_bytes(body, headers)
        expires = asyncio.get_running_loop().time() + deadline
        try:
            async with asyncio.timeout_at(expires):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    stream = await self._start(conn, request, reused, expires)
                except _StaleConnection:
                    stream = await self._start(await self._connect(), request, False, expires)
                if stream_if is not None and stream_if(stream.status, stream.headers):
                    return stream
                try:
                    content = await stream._read_all()
                finally:
                    await stream.aclose()
        except TimeoutError as exc:
            raise HttpError(f"no answer within {deadline}s") from exc
        except OSError as exc:
            raise HttpError(f"connection failed: {exc}") from exc
        return HttpResponse(stream.status, stream.headers, content)

    async def _start(self, conn: _Conn, request: bytes, reused: bool, expires: float) -> HttpStream:
        reader, writer = conn
        try:
            writer.write(request)
            await writer.drain()
            try:
                status_line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if reused:
                    raise _StaleConnection("idle connection was closed") from exc
                raise HttpError("connection closed before a response") from exc
            status, headers, keep = await self._read_head(reader, status_line)
        except HttpError:
            writer.close()
            raise
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            writer.close()
            raise HttpError(f"malformed or truncated response: {exc}") from exc
        return HttpStream(self, conn, status, headers, keep, expires)

    async def _read_head(
        self, reader: asyncio.StreamReader, status_line: bytes
    ) -> tuple[int, dict[str, str], bool]:
        version, _, rest = status_line.decode("latin-1").partition(" ")
        if not version.startswith("HTTP/1."):
            raise HttpError(f"not an HTTP/1.x response: {status_line[:40]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        size = 0
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise HttpError("response headers too large")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise HttpError("malformed header line")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return status, headers, keep

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn[1].close()

    async def aclose(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
