"""cmcp_devkit.serving: the counted MCP app, GET /calls, and the helper servers' start-up."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from cmcp_devkit.ports import free_port
from cmcp_devkit.procs import ready_url, running, start
from cmcp_devkit.serving import (
    CallCounter,
    WithCounter,
    parse_listen,
    server_config,
    serving,
)


def _inner() -> ASGIApp:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("inner")

    return Starlette(routes=[Route("/calls", hello), Route("/mcp", hello)])


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("[::1]", 9)
    host, port = parse_listen("127.0.0.1:0")
    assert host == "127.0.0.1" and port > 0  # 0 is replaced so it can be announced
    with pytest.raises(ValueError):
        parse_listen("127.0.0.1:http")


def test_server_config_is_quiet_and_overridable() -> None:
    config = server_config(_inner(), "127.0.0.1", 1)
    assert config.log_level == "warning" and config.lifespan == "on"
    assert server_config(_inner(), "127.0.0.1", 1, log_level="debug").log_level == "debug"


def test_counter_total_sums_tools() -> None:
    counter = CallCounter()
    counter["a"] += 2
    counter["b"] += 1
    assert counter.total() == 3


async def test_with_counter_serves_calls_and_passes_everything_else() -> None:
    counter = CallCounter({"echo": 2, "add": 1})
    app = WithCounter(_inner(), counter)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        calls = await client.get("/calls")
        assert calls.json() == {"total": 3, "by_tool": {"echo": 2, "add": 1}}  # not the inner app's route
        assert (await client.get("/mcp")).text == "inner"
    counter["echo"] += 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/calls")).json()["total"] == 4


async def test_serving_binds_before_yielding_and_stops_after() -> None:
    port = free_port()
    async with serving(server_config(WithCounter(_inner(), CallCounter()), "127.0.0.1", port)) as server:
        assert server.started
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{port}/calls")
        assert r.json() == {"total": 0, "by_tool": {}}
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/calls", timeout=2.0)


def test_run_until_stopped_announces_ready_and_exits_zero_on_sigint(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        from starlette.applications import Starlette
        from cmcp_devkit.serving import run_until_stopped
        raise SystemExit(run_until_stopped(Starlette(), "127.0.0.1:0", path="/x", note="hello"))
    """)
    proc = start("helper", [sys.executable, "-c", code], tmp_path)
    with running([proc]):
        while ready_url(proc.output()) is None:
            assert proc.alive(), proc.output()
            time.sleep(0.02)
        line = next(ln for ln in proc.output().splitlines() if ln.startswith("READY "))
        url = ready_url(proc.output())
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/x")
        assert line.endswith(" hello")
        assert httpx.get(url.removesuffix("/x") + "/", timeout=5.0).status_code == 404  # it is serving
        proc.stop()
        assert proc.popen.returncode == 0
