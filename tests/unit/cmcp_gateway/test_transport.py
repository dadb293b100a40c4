"""The gateway's bare-ASGI front door: routing, methods, lifespan, body reading, wire format.

Everything here is answered before an enclave is consulted, so the gateway runs with a route
that has no enclaves (and, for start-up failure, one whose McpRoute cannot be read). Requests
go over real sockets to uvicorn with the gateway's own httptools protocol; the wire bytes are
read raw so header and body bytes are checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.lifespan.on import LifespanOn

from cmcp_core.route_status import RouteRef
from cmcp_devkit.ports import free_port
from cmcp_gateway.app import Gateway, build
from cmcp_gateway.config import GatewayConfig, GatewayLimits, RouteConfig
from cmcp_gateway.metrics import REQUESTS
from cmcp_gateway.transport import Response, _pump
from tests.helpers.gateway_stack import gateway_config, serve

LIMIT = 64


def _config(**route: Any) -> GatewayConfig:
    fields: dict[str, Any] = {"name": "t", "upstream": "http://127.0.0.1:9/mcp", "audience": "a",
                              "expected_bundle_hashes": frozenset({"sha256:" + "ab" * 32})}
    fields["open"] = True  # no credential needed: these requests never reach a decision
    return gateway_config(RouteConfig(**{**fields, **route}), limits=GatewayLimits(max_body_bytes=LIMIT))


@pytest.fixture
async def port() -> AsyncIterator[int]:
    gateway, app = build(_config())
    number = free_port()
    async with serve(app, number):
        yield number
    assert not gateway.limiter._inflight  # every request released its concurrency slot


async def _raw(port: int, request: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``request`` bytes, read to EOF; (status, our headers in wire order, body).

    uvicorn's own ``date``, ``server`` and ``connection`` headers are left out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read(-1)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    ours = [h for h in headers if h[0] not in ("date", "server", "connection")]
    return int(status_line.split()[1]), ours, body


def _request(method: str, path: str = "/mcp", body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n")
    return head.encode() + b"\r\n" + body


async def test_unknown_path_is_404(port: int) -> None:
    for path in ("/", "/mcp/", "/mcp/other", "/metrics"):
        status, headers, body = await _raw(port, _request("POST", path))
        assert (status, body) == (404, b"Not Found")
        assert headers == [("content-length", "9"), ("content-type", "text/plain; charset=utf-8")]


async def test_get_is_405_with_allow_and_other_methods_too(port: int) -> None:
    before = REQUESTS.labels(code="get_not_offered")._value.get()
    status, headers, body = await _raw(port, _request("GET", "/mcp/t"))
    assert (status, headers, body) == (405, [("allow", "POST, DELETE"), ("content-length", "0")], b"")
    assert REQUESTS.labels(code="get_not_offered")._value.get() == before + 1
    for method in ("PUT", "PATCH", "HEAD", "OPTIONS"):
        status, headers, _ = await _raw(port, _request(method))
        assert status == 405 and ("allow", "POST, DELETE") in headers, method


async def test_answers_are_one_json_body_with_its_length(port: int) -> None:
    ping = orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"})
    status, headers, body = await _raw(port, _request("POST", body=ping))
    assert (status, body) == (200, b'{"jsonrpc":"2.0","id":7,"result":{}}')
    assert headers == [("content-length", str(len(body))), ("content-type", "application/json")]
    note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert await _raw(port, _request("POST", body=note)) == (202, [("content-length", "0")], b"")


async def test_body_over_the_limit_is_413_declared_or_streamed(port: int) -> None:
    status, _, body = await _raw(port, _request("POST", body=b"x" * (LIMIT + 1)))
    assert status == 413 and orjson.loads(body)["error"]["data"]["error_code"] == "BODY_TOO_LARGE"
    # No content-length: the limit is enforced while the chunks arrive.
    chunk = b"x" * LIMIT
    chunked = (
        b"POST /mcp HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        + b"0\r\n\r\n"
    )
    status, _, body = await _raw(port, chunked)
    assert status == 413 and orjson.loads(body)["error"]["data"]["error_code"] == "BODY_TOO_LARGE"


async def test_disconnect_mid_body_answers_nothing_and_serving_goes_on(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-length: 40\r\n\r\n{\"jsonrpc\":")
    await writer.drain()
    await asyncio.sleep(0.1)  # the gateway is now waiting for the rest of the body
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    ping = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert (await _raw(port, _request("POST", body=ping)))[0] == 200


async def test_disconnect_mid_body_at_the_asgi_interface() -> None:
    """Driven through the ASGI callable itself: nothing is sent after ``http.disconnect``."""
    gateway, app = build(_config())
    await gateway.startup()
    try:
        messages = [
            {"type": "http.request", "body": b'{"jsonrpc":', "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [], "state": {}}
        await app(scope, receive, send)
        assert sent == [] and not gateway.limiter._inflight
    finally:
        await gateway.shutdown()


async def _lifespan(gateway: Gateway) -> list[dict[str, Any]]:
    """Run the ASGI lifespan protocol to its end; the messages the gateway sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gateway({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    return sent


async def test_lifespan_starts_and_stops() -> None:
    gateway, _ = build(_config())
    sent = await _lifespan(gateway)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert gateway.refresher.jobs  # startup ran


async def test_lifespan_startup_failure_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable McpRoute (no cluster credentials) fails start-up: reported, uvicorn stops."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    gateway, _ = build(_config(kubernetes=RouteRef("ns", "route")))
    sent = await _lifespan(gateway)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "ConfigException: Invalid kube-config file" in sent[0]["message"]
    # uvicorn's own lifespan driver sees the failure and would exit instead of serving.
    config = uvicorn.Config(build(_config(kubernetes=RouteRef("ns", "route")))[1], lifespan="on")
    config.load()
    driver = LifespanOn(config)
    await driver.startup()
    assert driver.startup_failed and driver.should_exit


class _ShutdownFails(Gateway):
    """A gateway whose real shutdown is followed by an error (no real one is easy to provoke)."""

    async def shutdown(self) -> None:
        await super().shutdown()
        raise RuntimeError("shutdown broke: the exception text")


async def test_lifespan_shutdown_failure_is_reported() -> None:
    sent = await _lifespan(_ShutdownFails(_config()))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    assert "RuntimeError: shutdown broke: the exception text" in sent[1]["message"]


class _SwallowsOneCancel:
    """An endless stream (an idle GET stream's keepalives) with one place that swallows a
    cancellation once, as Python 3.11's ``asyncio.wait_for`` does when the cancellation arrives
    in the loop turn its own result does."""

    def __init__(self) -> None:
        self.swallowed = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1
            yield b": keepalive\r\n\r\n"

    async def aclose(self) -> None:
        self.closed = True


async def _client_leaves_after(seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"type": "http.disconnect"}


async def test_a_stream_stops_when_its_client_leaves_even_past_a_swallowed_cancellation() -> None:
    stream, sent = _SwallowsOneCancel(), []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    response = Response(stream=stream, media_type="text/event-stream")
    sending = asyncio.ensure_future(response.send(send, lambda: _client_leaves_after(0.05)))
    try:
        # Not asyncio.timeout: its cancellation would reach the pump through the await chain
        # and stop it a second time, which the server (waiting for its requests) never does.
        done, _ = await asyncio.wait({sending}, timeout=5)
        assert sending in done, "the stream is still pumping after its client left"
    finally:
        sending.cancel()
    sending.result()
    streamed = len(sent)
    await asyncio.sleep(0.1)
    assert len(sent) == streamed  # nothing pumps on behind the answer
    assert stream.swallowed == 1 and stream.closed
    assert sent[0]["type"] == "http.response.start" and sent[1]["body"] == b": keepalive\r\n\r\n"
    assert all(m.get("more_body") for m in sent[1:])  # cut off: no closing empty body


async def test_the_attack_one_cancel_of_the_pump_is_lost_to_such_a_stream() -> None:
    """The weakened transport, as it was: one ``Task.cancel`` of the pump when the client leaves.
    The stream swallows it and streams on (into a connection nobody reads) forever."""
    stream, sent = _SwallowsOneCancel(), []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    pump = asyncio.ensure_future(_pump(stream, send))
    await asyncio.sleep(0.05)
    pump.cancel()
    await asyncio.sleep(0.2)
    streamed = len(sent)
    await asyncio.sleep(0.2)
    assert stream.swallowed == 1 and not pump.done() and len(sent) > streamed
    pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump
    assert pump.cancelled()


async def test_a_stream_that_ends_is_sent_whole_and_a_failing_one_raises() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    class _Chunks:
        def __init__(self, *chunks: bytes | Exception) -> None:
            self.chunks, self.closed = chunks, False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for chunk in self.chunks:
                if isinstance(chunk, Exception):
                    raise chunk
                yield chunk

        async def aclose(self) -> None:
            self.closed = True

    whole = _Chunks(b"a", b"b")
    await Response(stream=whole).send(send, lambda: _client_leaves_after(60))
    assert [m.get("body") for m in sent[1:]] == [b"a", b"b", b""] and whole.closed
    failing = _Chunks(b"a", RuntimeError("upstream broke"))
    with pytest.raises(RuntimeError, match="upstream broke"):
        await Response(stream=failing).send(send, lambda: _client_leaves_after(60))
    assert failing.closed
