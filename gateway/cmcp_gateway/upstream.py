"""Raw MCP streamable-HTTP client from the gateway to one upstream, on pooled keep-alive HTTP/1.1.

Raw JSON-RPC instead of the SDK's ``ClientSession``: the gateway relays results verbatim (no
model round trip that could drop fields), and :mod:`cmcp_gateway.http1` keeps per-call cost
low (docs/adr/0002-pooled-http11-upstream-client.md). The era is negotiated once:
``server/discover`` (2026-07-28, stateless, one POST per call) else the ``initialize``
handshake with an ``Mcp-Session-Id`` (re-established when it expires). A ``tools/call`` is
never retried here (only :mod:`~cmcp_gateway.http1`'s resend on a keep-alive connection that
was already closed, which the single-use permit makes harmless).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.http1 import Http1Client, HttpError, HttpResponse, HttpStream

MODERN = "2026-07-28"
SSE = "text/event-stream"
LEGACY = "2025-11-25"
CLIENT_INFO = {"name": "cmcp-gateway", "version": "0.1.0"}
_MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    CLIENT_CAPABILITIES_META_KEY: {},  # per request: UpstreamClient.call
    "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
}
_BASE_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _parse_sse(body: bytes, request_id: int) -> Any:
    """The JSON-RPC response for ``request_id`` inside a whole SSE body (all else is skipped)."""
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        message = _event_message(event)
        if _kind(message, request_id) == "response":
            return message
    raise ValueError("SSE stream ended without the response")


def _kind(message: Any, request_id: int) -> str | None:
    """What one message on a request's SSE stream is: the ``response`` to ``request_id``, a
    ``notification``, a ``request`` from the upstream to the client, or ``None`` (anything else,
    such as another request's answer: skipped)."""
    if not isinstance(message, dict):
        return None
    if message.get("id") == request_id and ("result" in message or "error" in message):
        return "response"
    if isinstance(message.get("method"), str):
        return "request" if "id" in message else "notification"
    return None


def _capabilities(result: Any) -> dict[str, Any]:
    found = result.get("capabilities") if isinstance(result, dict) else None
    return found if isinstance(found, dict) else {}


class UpstreamClient:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.http = Http1Client(url)
        self.timeout = timeout
        self.mode: str | None = None
        self.session_id: str | None = None
        self.capabilities: dict[str, Any] = {}  # what the upstream said it offers
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _post(self, message: dict[str, Any], headers: dict[str, str]) -> HttpResponse:
        try:
            return await self.http.post(orjson.dumps(message), headers, self.timeout)
        except HttpError as exc:
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, f"upstream unreachable: {exc}") from exc

    async def _negotiate(self) -> None:
        async with self._lock:
            if self.mode is not None:
                return
            rid = next(self._ids)
            resp = await self._post(
                {"jsonrpc": "2.0", "id": rid, "method": "server/discover", "params": {"_meta": _MODERN_META}},
                {**_BASE_HEADERS, "mcp-protocol-version": MODERN, "mcp-method": "server/discover"},
            )
            try:
                result = self._decode(resp, rid).get("result") or {}
            except (CmcpError, ValueError):
                result = {}
            if isinstance(result, dict) and MODERN in (result.get("supportedVersions") or ()):
                self.capabilities = _capabilities(result)
                self.mode = MODERN
                return
            rid = next(self._ids)
            resp = await self._post(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "method": "initialize",
                    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": CLIENT_INFO},
                },
                dict(_BASE_HEADERS),
            )
            message = self._decode(resp, rid)
            if "result" not in message:
                raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "upstream refused initialize")
            self.capabilities = _capabilities(message["result"])
            session_id = resp.headers.get("mcp-session-id")
            headers = {**_BASE_HEADERS, "mcp-protocol-version": LEGACY}
            if session_id:
                headers["mcp-session-id"] = session_id
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
            self.session_id, self.mode = session_id, LEGACY

    def _decode(self, resp: HttpResponse, request_id: int) -> dict[str, Any]:
        """The JSON-RPC message in ``resp``; a guard's coded 403 is returned as the error it is."""
        ctype = resp.headers.get("content-type", "")
        try:
            if ctype.startswith(SSE):
                message = _parse_sse(resp.content, request_id)
            elif ctype.startswith("application/json"):
                message = orjson.loads(resp.content)
            else:
                raise ValueError(f"unexpected content type {ctype!r}")
        except ValueError as exc:
            raise CmcpError(
                Code.UPSTREAM_UNAVAILABLE,
                f"upstream answered HTTP {resp.status} without a JSON-RPC message",
            ) from exc
        if not isinstance(message, dict) or ("result" not in message and "error" not in message):
            raise CmcpError(
                Code.UPSTREAM_UNAVAILABLE, "upstream answered with something else than a response"
            )
        return message

    def _headers(self, method: str, params: dict[str, Any]) -> dict[str, str]:
        headers = dict(_BASE_HEADERS)
        if self.mode == MODERN:
            headers["mcp-protocol-version"] = MODERN
            headers["mcp-method"] = method
            name_key = NAME_BEARING_METHODS.get(method)
            if name_key is not None and name_key in params:
                headers["mcp-name"] = encode_header_value(str(params[name_key]))
        else:
            headers["mcp-protocol-version"] = LEGACY
            if self.session_id:
                headers["mcp-session-id"] = self.session_id
        return headers

    async def offered(self) -> dict[str, Any]:
        """The upstream's server capabilities (negotiating first if not done yet)."""
        if self.mode is None:
            await self._negotiate()
        return self.capabilities

    async def is_modern(self) -> bool:
        """Whether the upstream speaks 2026-07-28: it takes its log level per request (``_meta``)
        rather than from ``logging/setLevel``, and follows resources with ``subscriptions/listen``
        rather than ``resources/subscribe`` on a session."""
        if self.mode is None:
            await self._negotiate()
        return self.mode == MODERN

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        extra_headers: dict[str, str] | None = None,
        *,
        idempotent: bool = False,
    ) -> dict[str, Any]:
        """Send one request; return the upstream's JSON-RPC response message (result or error)."""
        answer = await self.call(method, params, extra_headers, idempotent=idempotent, streaming=False)
        assert not isinstance(answer, ReplyStream)
        return answer

    async def call(
        self,
        method: str,
        params: dict[str, Any],
        extra_headers: dict[str, str] | None = None,
        *,
        idempotent: bool = False,
        streaming: bool = True,
        client_capabilities: dict[str, Any] | None = None,
        lasting: float | None = None,
    ) -> dict[str, Any] | ReplyStream:
        """Send one request. An upstream answering in SSE gives a :class:`ReplyStream` (read as the
        upstream writes it) when ``streaming``; otherwise its JSON-RPC response (result or error),
        read whole. ``client_capabilities``: what the agent may be asked, told to a 2026-07-28
        upstream (with none, it asks the agent nothing). ``lasting``: the whole exchange's
        deadline in seconds, when it is not the client's (a listen stream lasts longer than a call)."""
        if self.mode is None:
            await self._negotiate()
        if self.mode == MODERN:
            meta = {**(params.get("_meta") or {}), **_MODERN_META}
            if client_capabilities:
                meta[CLIENT_CAPABILITIES_META_KEY] = client_capabilities
            params = {**params, "_meta": meta}
        rid = next(self._ids)
        headers = self._headers(method, params)
        if extra_headers:
            headers.update(extra_headers)
        message = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}

        def stream_if(status: int, head: Mapping[str, str]) -> bool:
            return streaming and status < 300 and head.get("content-type", "").startswith(SSE)

        try:
            resp = await self.http.exchange(orjson.dumps(message), headers, lasting or self.timeout,
                                            stream_if=stream_if)
        except HttpError as exc:
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, f"upstream unreachable: {exc}") from exc
        if isinstance(resp, HttpStream):
            return ReplyStream(resp, rid)
        if resp.status == 404 and self.mode == LEGACY:
            self.mode = self.session_id = None  # the upstream dropped our session: handshake again next time
            if idempotent:
                return await self.call(method, params, extra_headers, streaming=streaming)
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "upstream session expired")
        if resp.status >= 500:
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, f"upstream answered HTTP {resp.status}")
        return self._decode(resp, rid)


class ReplyStream:
    """An upstream's SSE answer, message by message as it arrives: the notifications it sends on
    the request's stream, then the response (:meth:`messages` ends with it). A request from the
    upstream to the client cannot be relayed yet and ends the stream with
    ``UPSTREAM_REQUEST_NOT_RELAYED``, rather than leaving the upstream waiting for an answer."""

    def __init__(self, stream: HttpStream, request_id: int) -> None:
        self._stream = stream
        self._request_id = request_id

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        buffer = b""
        try:
            async for chunk in self._stream.chunks():
                buffer += chunk.replace(b"\r\n", b"\n")
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    message = _event_message(event)
                    kind = _kind(message, self._request_id)
                    if kind == "request":
                        raise CmcpError(Code.UPSTREAM_REQUEST_NOT_RELAYED,
                                        f"the upstream sent {message['method']!r} to the client; "
                                        "requests from the upstream are not relayed yet")
                    if kind is not None:
                        yield message
                    if kind == "response":
                        return
        except HttpError as exc:
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, f"upstream stream broke: {exc}") from exc
        except ValueError as exc:
            raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "upstream stream carried a non-JSON message") from exc
        raise CmcpError(Code.UPSTREAM_UNAVAILABLE, "upstream stream ended without the response")

    async def aclose(self) -> None:
        await self._stream.aclose()


def _event_message(event: bytes) -> Any:
    data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
    return orjson.loads(data) if data else None
