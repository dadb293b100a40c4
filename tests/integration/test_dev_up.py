"""``cmcpctl dev up`` against an MCP server it did not start, with the official ``mcp`` SDK on both sides.

The user's server is an SDK ``MCPServer`` this test runs on a free port (in a thread); ``cmcpctl
dev up`` runs as a subprocess exactly as a policy author would run it; the client is the SDK's.
An allowed ``tools/call`` reaches the server (its own counter says so), a denied one does not,
and SIGTERM stops dev up (exit 0) together with every process it started.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from cmcp_devkit.ports import free_port
from tests.helpers.gateway_stack import agent
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "realistic"
ALLOWED = {"amount": 100, "currency": "EUR", "to": "acct-1"}
DENIED = {"amount": 50_000, "currency": "EUR", "to": "acct-1"}  # over the bundle's transfer limit
READY_TIMEOUT = 120.0


@dataclass
class UserServer:
    url: str
    calls: collections.Counter[str]


@pytest.fixture
def user_server() -> Iterator[UserServer]:
    """The policy author's own MCP server: the SDK's, nothing from cMCP."""
    calls: collections.Counter[str] = collections.Counter()
    server = MCPServer("my-payments-server")

    @server.tool(name="payments.transfer")
    def transfer(amount: int, currency: str, to: str) -> dict[str, Any]:
        """Move money."""
        calls["payments.transfer"] += 1
        return {"amount": amount, "currency": currency, "to": to, "status": "sent"}

    port = free_port()
    http = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=port,
                                         log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not http.started:
        assert time.monotonic() < deadline, "the user's MCP server did not start"
        time.sleep(0.05)
    yield UserServer(url=f"http://127.0.0.1:{port}/mcp", calls=calls)
    http.should_exit = True
    thread.join(timeout=10)


def _read_ready_line(proc: subprocess.Popen[str], stderr_path: Path) -> dict[str, Any]:
    """dev up's one JSON line, read in a thread so a hung start fails the test instead of hanging it."""
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(READY_TIMEOUT)
    assert lines and lines[0].strip(), (
        f"dev up printed nothing (exit {proc.poll()}):\n{stderr_path.read_text()}"
    )
    doc: dict[str, Any] = json.loads(lines[0])
    return doc


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@dataclass
class DevUp:
    proc: subprocess.Popen[str]
    ready: dict[str, Any]
    stderr_path: Path


@pytest.fixture
def dev_up(user_server: UserServer, tmp_path: Path) -> Iterator[DevUp]:
    """``cmcpctl dev up`` as a user runs it, up and ready (killed if the test left it running)."""
    stderr_path = tmp_path / "dev-up.stderr"
    cmcpctl = Path(sys.executable).with_name("cmcpctl")
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [str(cmcpctl), "dev", "up", "--bundle", str(BUNDLE), "--upstream", user_server.url,
             "--workdir", str(tmp_path / "work")],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    try:
        yield DevUp(proc, _read_ready_line(proc, stderr_path), stderr_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_dev_up_guards_a_server_it_did_not_start(user_server: UserServer, dev_up: DevUp) -> None:
    ready = dev_up.ready
    assert ready["route"] == "dev"
    assert ready["mcp_url"].endswith("/mcp/dev")
    children = [ready["enclave"]["pid"], ready["guard"]["pid"], ready["gateway"]["pid"]]

    async with agent(ready["mcp_url"], token=ready["token"]) as client:
        result = await client.call_tool("payments.transfer", ALLOWED)
        assert result.is_error is False
        assert result.structured_content == {**ALLOWED, "status": "sent"}
        assert user_server.calls["payments.transfer"] == 1  # it reached the user's server

        with pytest.raises(MCPError) as denied:
            await client.call_tool("payments.transfer", DENIED)
        assert denied.value.error.data["error_code"] == "POLICY_DENY"
        assert user_server.calls["payments.transfer"] == 1  # the denied call never ran

    dev_up.proc.send_signal(signal.SIGTERM)
    assert dev_up.proc.wait(timeout=60) == 0, dev_up.stderr_path.read_text()
    for pid in children:
        assert _gone(pid), f"child {pid} outlived cmcpctl dev up"
