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

    async def post(self, body: bytes, headers: dict[str, str], deadline: float) -> HttpResponse:
        head = [f"POST {self.path} HTTP/1.1", f"host: {self.authority}", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items() if "\r" not in v and "\n" not in v]
        try:
            request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        except UnicodeEncodeError as exc:
            raise HttpError("a header value is not latin-1") from exc
        try:
            async with asyncio.timeout(deadline):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await self._connect()
                try:
                    return await self._exchange(conn, request, reused)
                except _StaleConnection:
                    return await self._exchange(await self._connect(), request, False)
        except TimeoutError as exc:
            raise HttpError(f"no answer within {deadline}s") from exc
        except OSError as exc:
            raise HttpError(f"connection failed: {exc}") from exc

    async def _exchange(self, conn: _Conn, request: bytes, reused: bool) -> HttpResponse:
        reader, writer = conn
        keep = False
        try:
            writer.write(request)
            await writer.drain()
            try:
                status_line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if reused:
                    raise _StaleConnection("idle connection was closed") from exc
                raise HttpError("connection closed before a response") from exc
            response, keep = await self._read_response(reader, status_line)
            return response
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            raise HttpError(f"malformed or truncated response: {exc}") from exc
        finally:
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                writer.close()

    async def _read_response(
        self, reader: asyncio.StreamReader, status_line: bytes
    ) -> tuple[HttpResponse, bool]:
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
        if "chunked" in headers.get("transfer-encoding", "").lower():
            content = await self._read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY_BYTES:
                raise HttpError("content-length out of range")
            content = await reader.readexactly(length)
        elif status in (204, 304) or 100 <= status < 200:
            content = b""
        else:
            content = await reader.read(MAX_BODY_BYTES)
            keep = False
        return HttpResponse(status, headers, content), keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise HttpError("chunked body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def aclose(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
