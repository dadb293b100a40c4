"""What every small ``mcp`` upstream (and helper HTTP process) of the project shares.

The dev kit's upstream (every tool profile) and the demo's wiretap differ only in their app;
the machinery around it is the same and lives here once:

* :class:`CallCounter` and :class:`WithCounter`: every tool execution is counted and served at
  ``GET /calls`` *outside* any guard (reading it runs no tool), which is how the suite, the demo
  and the tests prove that a refused call never executed;
* :func:`counted_app`: an SDK server's streamable-HTTP app, optionally behind the product guard
  middleware, with ``GET /calls`` beside it;
* :func:`parse_listen`, :func:`server_config` (free ports come from :mod:`cmcp_devkit.ports`);
* :func:`serving` (in-process, for tests) and :func:`run_until_stopped` (a process ``main`` that
  prints ``READY <url>`` once serving, the line launchers wait for: :func:`cmcp_devkit.procs.ready_url`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cmcp_devkit.ports import free_port
from cmcp_devkit.procs import READY_PREFIX

if TYPE_CHECKING:  # only the type: building a server is the caller's business
    from mcp.server.mcpserver import MCPServer



class CallCounter(collections.Counter[str]):
    """Tool executions by tool name; ``total()`` is the sum (``collections.Counter.total``)."""


class WithCounter:
    """Serves ``GET /calls`` beside the (possibly guarded) MCP app.

    It wraps the guard rather than sitting behind it so that reading the counter needs no permit
    and can never be mistaken for a tool call."""

    def __init__(self, app: ASGIApp, counter: CallCounter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/calls":
            response = JSONResponse({"total": self.counter.total(), "by_tool": dict(self.counter)})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def counted_app(
    server: MCPServer, counter: CallCounter, guard: Any = None, *, json_response: bool = True,
    **app_options: Any,
) -> ASGIApp:
    """``server``'s streamable-HTTP app, behind ``guard`` (a ``cmcp_guard`` Guard) when given.

    The guard middleware is imported only when a guard is given, so an unguarded upstream does
    not pull in the guard's attestation stack. ``app_options`` go to the SDK's app (session caps)."""
    app: ASGIApp = server.streamable_http_app(json_response=json_response, **app_options)
    if guard is not None:
        from cmcp_guard.middleware import GuardMiddleware

        app = GuardMiddleware(app, guard)
    return WithCounter(app, counter)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); port 0 is replaced by a free one so it can be announced."""
    host, _, port_text = listen.rpartition(":")
    return host, int(port_text) or free_port()


def server_config(app: ASGIApp, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The quiet uvicorn configuration every helper server uses (``overrides`` win)."""
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", **overrides}
    return uvicorn.Config(app, host=host, port=port, **options)


async def _start(server: uvicorn.Server) -> asyncio.Task[None]:
    """Serve in a task; return it once uvicorn has bound its socket (or raise what stopped it)."""
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # a start-up failure surfaces here (uvicorn exits via SystemExit)
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    return task


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[uvicorn.Server]:
    """Run ``config``'s app in this event loop until the block exits."""
    server = uvicorn.Server(config)
    task = await _start(server)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def run_until_stopped(
    app: ASGIApp, listen: str, *, path: str = "/mcp", note: str = "", **server_options: Any
) -> int:
    """A helper process's ``main``: serve ``app`` on ``listen`` and print ``READY http://HOST:PORT<path>``.

    The READY line goes to stdout only once the socket is bound, so a launcher that reads it can
    connect at once; SIGINT/SIGTERM end the process normally (exit status 0). ``note`` follows the
    URL on the same line (the benchmarks record which upstream served them)."""
    host, port = parse_listen(listen)
    server = uvicorn.Server(server_config(app, host, port, **server_options))

    async def serve() -> None:
        task = await _start(server)
        print(f"{READY_PREFIX}http://{host}:{port}{path}" + (f" {note}" if note else ""), flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
