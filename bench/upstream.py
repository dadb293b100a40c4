"""The benchmark upstream: an `mcp` SDK streamable-HTTP server with a tiny 1 KiB tool.

Run as its own process (``python -m bench.upstream --port N [guard options]``) so
every path (direct, ours, origin) talks to the same server code over loopback.

It reuses the project's shared test upstream (``tests/helpers/upstream.py``:
same SDK server, same JSON-response mode, same guard wiring) and adds one tool,
``bench_echo``, that returns exactly ``PAYLOAD_BYTES`` bytes of text.  When the
test helpers are not importable it falls back to a bare SDK server with the same
tool, so the harness never depends on test code being present.

The payload is plain ``x`` characters on purpose: the origin gateway scans
responses for PII / credentials / injection patterns and would block a payload
that happened to match one.

Our path runs a second instance of this process with the upstream guard enabled
(``--guard-audience ...``), as ASGI middleware in front of the same app: the
guard is part of what we add, the origin has no equivalent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

TOOL_NAME = "bench_echo"
TOOL_DESCRIPTION = "Benchmark tool: returns 1 KiB of text."
PAYLOAD_BYTES = 1024
_PAYLOAD = "x" * PAYLOAD_BYTES
# The memory figure holds 10,000 sessions open at once; the SDK default cap is 10,000.
_SESSION_LIMITS: dict[str, Any] = {"max_sessions": 50_000, "session_idle_timeout": 1800}


def _add_bench_tool(server: MCPServer) -> None:
    @server.tool(name=TOOL_NAME, description=TOOL_DESCRIPTION)
    def bench_echo(seq: int = 0) -> str:
        return _PAYLOAD


def build_asgi(guard_args: argparse.Namespace | None) -> tuple[Any, str]:
    """The ASGI app and a note of which upstream implementation it is."""
    shared: Any
    try:
        from tests.helpers import upstream as shared
    except ImportError:  # pragma: no cover - shared helper missing
        shared = None
    if shared is not None:
        server, _counter = shared.build_server()
        _add_bench_tool(server)
        app: Any = server.streamable_http_app(json_response=True, **_SESSION_LIMITS)
        guard = shared._guard_from_args(guard_args) if guard_args is not None else None
        if guard is not None:
            from cmcp_guard.middleware import GuardMiddleware

            app = GuardMiddleware(app, guard)
        return app, "tests.helpers.upstream+bench_echo" + ("+guard" if guard is not None else "")
    if guard_args is not None and guard_args.guard_audience:
        raise SystemExit("guard requested but tests.helpers.upstream is not importable")
    server = MCPServer(name="cmcp-bench-upstream", log_level="WARNING")
    _add_bench_tool(server)
    return server.streamable_http_app(json_response=True, **_SESSION_LIMITS), "bench.upstream (standalone)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark MCP upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--guard-audience", help="enable the cmcp guard for this audience")
    parser.add_argument("--guard-enclave", action="append", default=[], help="HOST:PORT to attest")
    parser.add_argument("--allow-simulated", action="store_true")
    parser.add_argument("--expected-bundle-hash", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app, kind = build_asgi(args if args.guard_audience else None)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning",
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        print(f"READY http://127.0.0.1:{args.port}/mcp {kind}", flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
