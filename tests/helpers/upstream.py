"""A real ``mcp`` SDK streamable-HTTP upstream for tests, demos and benchmarks.

API:
  * ``build_server() -> (MCPServer, CallCounter)`` — tools: ``echo(text)`` (text),
    ``add(a, b)`` (structured ``{"total": ...}``), ``image()`` (PNG image part), ``fail(reason)``
    (``isError``), ``search(query, limit=3)`` (structured), and the examples/ catalog tools:
    ``payments.transfer`` (structured receipt), ``crm.lookup_customer``,
    ``ehr.read_patient_record`` (structured), ``deals.read_pipeline`` (text + image parts),
    ``email.send_external``, ``slack.post_internal``, ``web.search``, ``résumé.parse``.
    ``CallCounter`` counts tool executions by name (``counter.total()``, ``counter[name]``).
  * ``build_app(guard=None, json_response=True)`` -> ``(asgi_app, counter)``; ``guard`` is a
    ``cmcp_guard.middleware.Guard`` wrapping the app. ``GET /calls`` returns the counter as
    JSON (``{"total": n, "by_tool": {...}}``) and is never guarded (it runs no tool).
    The counter, ``GET /calls``, the guard wiring, ``free_port`` and the READY process main are
    the product's (:mod:`cmcp_conformance.serving`); only the tools are the tests' own. They
    stay separate from the demo's realistic tools on purpose: the gateway tests need shapes the
    demo has no reason to return (a text + image mixed result, ``status: "sent"``, bare dicts).
  * ``async with run_upstream(guard=None) as up:`` — in-process uvicorn on 127.0.0.1, free
    port; ``up.url`` (MCP endpoint ``.../mcp``), ``up.counter``.
  * Process: ``python -m tests.helpers.upstream --listen 127.0.0.1:9001 [--guard-audience AUD
    --guard-enclave HOST:PORT ... --allow-simulated --expected-bundle-hash H]`` prints
    ``READY <url>`` on stdout when serving.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from mcp.server.mcpserver import Image, MCPServer
from pydantic import BaseModel
from starlette.types import ASGIApp

from cmcp_conformance.serving import (
    CallCounter,
    WithCounter,
    counted_app,
    free_port,
    run_until_stopped,
    server_config,
    serving,
)

__all__ = [
    "PNG_1X1",
    "CallCounter",
    "RunningUpstream",
    "WithCounter",
    "build_app",
    "build_server",
    "free_port",
    "run_upstream",
]

# 1x1 transparent PNG: a real non-text content part.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000005a0001e0a2db40000000049454e44ae426082"
)


class Sum(BaseModel):
    total: int


class Receipt(BaseModel):
    amount: int
    currency: str
    to: str
    status: str


class Hit(BaseModel):
    title: str
    score: float


class SearchResult(BaseModel):
    query: str
    hits: list[Hit]


def build_server() -> tuple[MCPServer, CallCounter]:
    server = MCPServer("cmcp-test-upstream")
    counter = CallCounter()

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        counter["echo"] += 1
        return text

    @server.tool()
    def add(a: int, b: int) -> Sum:
        """Add two integers (structured result)."""
        counter["add"] += 1
        return Sum(total=a + b)

    @server.tool()
    def image() -> Image:
        """Return a 1x1 PNG (non-text content)."""
        counter["image"] += 1
        return Image(data=PNG_1X1, format="png")

    @server.tool()
    def fail(reason: str) -> str:
        """Always fail: the result carries isError."""
        counter["fail"] += 1
        raise ValueError(reason)

    @server.tool()
    def search(query: str, limit: int = 3) -> SearchResult:
        """Pretend search (structured)."""
        counter["search"] += 1
        return SearchResult(
            query=query,
            hits=[Hit(title=f"{query} #{i}", score=1.0 / (i + 1)) for i in range(max(0, min(limit, 10)))],
        )

    # Tools named as in the examples/ bundles' catalogs (realistic, advisory, minimal).
    @server.tool(name="payments.transfer")
    def transfer(amount: int, currency: str, to: str) -> Receipt:
        """Move money (structured receipt)."""
        counter["payments.transfer"] += 1
        return Receipt(amount=amount, currency=currency, to=to, status="sent")

    @server.tool(name="crm.lookup_customer")
    def lookup_customer(customer_id: str) -> dict[str, str]:
        """Customer record (structured)."""
        counter["crm.lookup_customer"] += 1
        return {"customer_id": customer_id, "name": "Ada Lovelace", "tier": "gold"}

    @server.tool(name="ehr.read_patient_record")
    def read_patient_record(patient_id: str) -> dict[str, str]:
        """Patient record (structured, PHI)."""
        counter["ehr.read_patient_record"] += 1
        return {"patient_id": patient_id, "diagnosis": "J45.909"}

    @server.tool(name="deals.read_pipeline", structured_output=False)
    def read_pipeline(deal_id: str) -> list[Any]:
        """Mixed content: a text part and an image part."""
        counter["deals.read_pipeline"] += 1
        return [f"deal {deal_id}: stage 3", Image(data=PNG_1X1, format="png")]

    @server.tool(name="email.send_external")
    def send_external(to: str, subject: str = "", body: str = "") -> str:
        """Send mail outside the organisation."""
        counter["email.send_external"] += 1
        return f"sent to {to}"

    @server.tool(name="slack.post_internal")
    def post_internal(channel: str, body: str = "") -> str:
        counter["slack.post_internal"] += 1
        return f"posted to {channel}"

    @server.tool(name="web.search")
    def web_search(query: str) -> SearchResult:
        counter["web.search"] += 1
        return SearchResult(query=query, hits=[Hit(title=query, score=1.0)])

    @server.tool(name="résumé.parse")
    def parse_resume(body: str) -> dict[str, int]:
        counter["résumé.parse"] += 1
        return {"words": len(body.split())}

    return server, counter


def build_app(guard: Any = None, *, json_response: bool = True) -> tuple[ASGIApp, CallCounter]:
    server, counter = build_server()
    return counted_app(server, counter, guard, json_response=json_response), counter


@dataclass
class RunningUpstream:
    url: str
    counter: CallCounter
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def run_upstream(
    guard: Any = None, *, json_response: bool = True, port: int | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[RunningUpstream]:
    app, counter = build_app(guard, json_response=json_response)
    port = port or free_port()
    async with serving(server_config(app, host, port)) as server:
        yield RunningUpstream(url=f"http://{host}:{port}/mcp", counter=counter, server=server)


def _guard_from_args(args: argparse.Namespace) -> Any:
    """The product guard for ``--guard-*`` options (None without ``--guard-audience``)."""
    if not args.guard_audience:
        return None
    from cmcp_guard.main import build_guard

    bundles = frozenset(args.expected_bundle_hash) if args.expected_bundle_hash else None
    return build_guard(
        args.guard_audience,
        args.guard_enclave,
        allow_simulated=args.allow_simulated,
        expected_bundle_hashes=bundles,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--guard-audience", help="enable the cmcp guard for this audience")
    parser.add_argument("--guard-enclave", action="append", default=[], help="HOST:PORT to attest")
    parser.add_argument("--allow-simulated", action="store_true")
    parser.add_argument("--expected-bundle-hash", action="append", default=[])
    parser.add_argument("--sse", action="store_true", help="answer in SSE instead of JSON")
    args = parser.parse_args(argv)
    app, _ = build_app(_guard_from_args(args), json_response=not args.sse)
    sys.exit(run_until_stopped(app, args.listen))


if __name__ == "__main__":
    main()
