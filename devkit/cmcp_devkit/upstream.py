"""ONE counted ``mcp`` SDK streamable-HTTP upstream for tests, conformance, the demo and the benchmarks.

Each user needs different tools, so the server has *profiles* (``--profile``), not copies:

* ``test`` — the gateway tests' shapes (and examples/realistic's resources ``ehr://patients/{id}``
  and ``docs://handbook`` and prompt ``summarise_record``, plus the uncatalogued resource
  ``ehr://export/all``): ``echo(text)``, ``add(a, b)`` (structured
  ``{"total": ...}``), ``image()`` (PNG part), ``fail(reason)`` (``isError``), ``search`` and the
  ``examples/`` catalog tools (``payments.transfer``, ``crm.lookup_customer``,
  ``ehr.read_patient_record``, ``deals.read_pipeline`` (text + image parts), ``email.send_external``,
  ``slack.post_internal``, ``web.search``, ``résumé.parse``) with bare-dict and mixed results the demo
  has no reason to return;
* ``bench`` — ``test`` plus ``bench_echo`` (exactly :data:`PAYLOAD_BYTES` of ``x``: the origin
  gateway scans responses for PII and would block a payload that matched one) and ``bench_stream``
  (the same payload after :data:`BENCH_STREAM_PROGRESS` progress notifications, which travel on the
  request's stream when started with ``--sse``: the streamed-call figure), with session caps
  raised for the memory figure (many sessions open at once);
* ``demo`` — the tools of ``examples/realistic`` with realistic (fictitious) regulated data, plus
  ``crm.export_all_customers``, which the catalog does not name (it must never run through cMCP);
* ``conformance`` — the conformance bundle's tools (names from :class:`ConformanceTools`, which
  the suite's ``Profile`` fills), plus one uncatalogued tool POLICY-001 watches.

Every tool execution is counted; ``GET /calls`` (beside the MCP app, never guarded, runs no tool)
returns ``{"total": n, "by_tool": {...}}`` — how callers prove a refused call never executed.

Process: ``python -m cmcp_devkit.upstream --profile P --listen 127.0.0.1:0 [--guard-audience AUD
--guard-enclave HOST:PORT ... --allow-simulated --expected-bundle-hash H] [--sse]``; prints
``READY <mcp url> <profile>`` once serving. In process: ``async with run_upstream(...) as up``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.types import Completion
from pydantic import BaseModel
from starlette.types import ASGIApp

from cmcp_core import appraisal_options
from cmcp_core.attestation import Expected
from cmcp_devkit.ports import free_port
from cmcp_devkit.serving import (
    CallCounter,
    WithCounter,
    counted_app,
    run_until_stopped,
    server_config,
    serving,
)

__all__ = [
    "PNG_1X1",
    "PROFILES",
    "CallCounter",
    "ConformanceTools",
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

BENCH_TOOL = "bench_echo"
BENCH_TOOL_DESCRIPTION = "Benchmark tool: returns 1 KiB of text."
PAYLOAD_BYTES = 1024
BENCH_STREAM_TOOL = "bench_stream"
BENCH_STREAM_DESCRIPTION = "Benchmark tool: reports 3 progress notifications, then returns 1 KiB of text."
BENCH_STREAM_PROGRESS = 3
_PAYLOAD = "x" * PAYLOAD_BYTES
# The memory figure holds many sessions open at once; the SDK's default cap is lower.
BENCH_SESSION_LIMITS: dict[str, Any] = {"max_sessions": 50_000, "session_idle_timeout": 1800}

DEMO_UNCATALOGUED_TOOL = "crm.export_all_customers"


@dataclass(frozen=True)
class ConformanceTools:
    """The tool names the conformance suite relies on (its ``Profile`` carries the same defaults)."""

    allowed_tool: str = "echo"
    denied_tool: str = "delete_records"
    uncatalogued_tool: str = "shadow_tool"
    phi_tool: str = "read_patient_record"
    external_tool: str = "send_external_email"
    non_ascii_tool: str = "données_lire"
    resource: str = "conformance://notes/public"
    uncatalogued_resource: str = "conformance://notes/secret"
    prompt: str = "greeting"


# --- the ``test`` profile (and ``bench``, which adds one tool) ---------------------------------

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


def _test_tools(server: MCPServer, counter: CallCounter) -> None:
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
    def send_external(to: list[str], subject: str = "", body: str = "") -> str:
        """Send mail outside the organisation; ``to`` is one exact address per element, as the
        catalog of examples/realistic declares it (so policies compare addresses, not substrings)."""
        counter["email.send_external"] += 1
        return f"sent to {', '.join(to)}"

    @server.tool(name="slack.post_internal")
    def post_internal(channel: str, body: str = "") -> str:
        counter["slack.post_internal"] += 1
        return f"posted to {channel}"

    @server.tool(name="web.search")
    def web_search(query: str) -> SearchResult:
        counter["web.search"] += 1
        return SearchResult(query=query, hits=[Hit(title=query, score=1.0)])

    @server.tool()
    async def progress(steps: int, ctx: Context) -> str:
        """Report ``steps`` progress notifications and one log message, then answer (on an SSE
        upstream they travel on the request's stream before the result)."""
        counter["progress"] += 1
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
        await ctx.info(f"done after {steps} steps")
        return f"{steps} steps"

    @server.tool()
    async def hold(key: str, ctx: Context, wait_seconds: float = 10.0) -> str:
        """Report one progress notification, then wait (up to ``wait_seconds``) for
        :data:`RELEASES` ``[key]``: a caller that sets it on seeing the progress proves the
        notification reached it while the call was still running (relayed as it came, not after
        the result)."""
        counter["hold"] += 1
        await ctx.report_progress(1, 2, "holding")
        released = RELEASES.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), min(wait_seconds, 10.0))
        return "released" if released.is_set() else "not released"

    @server.tool(name="résumé.parse")
    def parse_resume(body: str) -> dict[str, int]:
        counter["résumé.parse"] += 1
        return {"words": len(body.split())}


# ``hold`` calls wait for their key here (in-process upstreams only; see the tool).
RELEASES: dict[str, asyncio.Event] = {}

# Resources and a prompt named as in examples/realistic's catalog, plus one it does not name.
PATIENT_TEMPLATE = "ehr://patients/{patient_id}"
HANDBOOK = "docs://handbook"
UNCATALOGUED_RESOURCE = "ehr://export/all"
RECORD_PROMPT = "summarise_record"


def _test_resources(server: MCPServer, counter: CallCounter) -> None:
    """Reads count under the resource's URI (template) and prompts under their name, like tools."""

    @server.resource(PATIENT_TEMPLATE, mime_type="application/json")
    def patient(patient_id: str) -> str:
        counter[PATIENT_TEMPLATE] += 1
        return f'{{"patient_id": "{patient_id}", "diagnosis": "J45.909"}}'

    @server.resource(HANDBOOK, mime_type="text/plain")
    def handbook() -> str:
        counter[HANDBOOK] += 1
        return "Be kind. Lock your screen."

    @server.resource(UNCATALOGUED_RESOURCE, mime_type="application/json")
    def export_all() -> str:
        counter[UNCATALOGUED_RESOURCE] += 1
        return '[{"patient_id": "p-1"}, {"patient_id": "p-2"}]'

    @server.prompt(name=RECORD_PROMPT)
    def summarise_record(audience: str = "clinician") -> str:
        counter[RECORD_PROMPT] += 1
        return f"Summarise the record for a {audience}."

    @server.completion()  # type: ignore[no-untyped-call, untyped-decorator]  # untyped in the SDK
    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        counter["completion/complete"] += 1
        choices = {"audience": ["clinician", "auditor", "patient"], "patient_id": ["p-1", "p-17"]}
        return Completion(values=[v for v in choices.get(argument.name, []) if v.startswith(argument.value)])


def _test_profile(server: MCPServer, counter: CallCounter) -> None:
    _test_tools(server, counter)
    _test_resources(server, counter)


def _bench_tools(server: MCPServer, counter: CallCounter) -> None:
    _test_tools(server, counter)

    @server.tool(name=BENCH_TOOL, description=BENCH_TOOL_DESCRIPTION)
    def bench_echo(seq: int = 0) -> str:
        return _PAYLOAD  # not counted: the benchmark's hot path measures the gateway, not the counter

    @server.tool(name=BENCH_STREAM_TOOL, description=BENCH_STREAM_DESCRIPTION)
    async def bench_stream(ctx: Context, seq: int = 0) -> str:
        # Sent only when the call carries ``_meta.progressToken`` (the SDK drops them otherwise).
        for step in range(1, BENCH_STREAM_PROGRESS + 1):
            await ctx.report_progress(step, BENCH_STREAM_PROGRESS)
        return _PAYLOAD  # not counted, as bench_echo


# --- the ``demo`` profile -----------------------------------------------------------------------

class Customer(BaseModel):
    customer_id: str
    name: str
    email: str
    phone: str
    tier: str


class DemoPatientRecord(BaseModel):
    patient_id: str
    name: str
    date_of_birth: str
    diagnosis: str
    medications: list[str]


class Deal(BaseModel):
    deal_id: str
    target: str
    stage: str
    announce_after: str


class Delivery(BaseModel):
    to: list[str]
    subject: str
    accepted: bool


class Posted(BaseModel):
    channel: str
    accepted: bool


class Transfer(BaseModel):
    amount: int
    currency: str
    to: str
    status: str


class WebHit(BaseModel):
    title: str
    url: str


class WebResult(BaseModel):
    query: str
    hits: list[WebHit]


class ParsedResume(BaseModel):
    words: int
    skills: list[str]


def _demo_tools(server: MCPServer, counter: CallCounter) -> None:
    @server.tool(name="crm.lookup_customer")
    def lookup_customer(customer_id: str) -> Customer:
        """Look up one customer record (returns PII)."""
        counter["crm.lookup_customer"] += 1
        return Customer(
            customer_id=customer_id,
            name="Ada Lovelace",
            email="ada.lovelace@example.com",
            phone="+44 20 7946 0018",
            tier="gold",
        )

    @server.tool(name=DEMO_UNCATALOGUED_TOOL)
    def export_all_customers() -> list[Customer]:
        """Dump every customer. Not in the measured catalog: must never run through cMCP."""
        counter[DEMO_UNCATALOGUED_TOOL] += 1
        return [lookup_customer("C-0001"), lookup_customer("C-0002")]

    @server.tool(name="ehr.read_patient_record")
    def read_patient_record(patient_id: str) -> DemoPatientRecord:
        """Read a patient's medical record (returns PHI)."""
        counter["ehr.read_patient_record"] += 1
        return DemoPatientRecord(
            patient_id=patient_id,
            name="John Q. Public",
            date_of_birth="1961-04-12",
            diagnosis="E11.9 type 2 diabetes mellitus",
            medications=["metformin 500 mg"],
        )

    @server.tool(name="deals.read_pipeline")
    def read_pipeline(deal_id: str) -> Deal:
        """Read the M&A deal pipeline (returns MNPI)."""
        counter["deals.read_pipeline"] += 1
        return Deal(deal_id=deal_id, target="Initech plc", stage="due diligence", announce_after="2027-01-15")

    @server.tool(name="email.send_external")
    def send_external(to: list[str], subject: str = "", body: str = "") -> Delivery:
        """Send e-mail outside the organisation (the demo only pretends to)."""
        counter["email.send_external"] += 1
        return Delivery(to=to, subject=subject, accepted=True)

    @server.tool(name="slack.post_internal")
    def post_internal(channel: str, body: str = "") -> Posted:
        """Post to an internal channel."""
        counter["slack.post_internal"] += 1
        return Posted(channel=channel, accepted=True)

    @server.tool(name="payments.transfer")
    def transfer(amount: int, currency: str, to: str) -> Transfer:
        """Transfer funds (the demo only pretends to)."""
        counter["payments.transfer"] += 1
        return Transfer(amount=amount, currency=currency, to=to, status="queued")

    @server.tool(name="web.search")
    def web_search(query: str) -> WebResult:
        """Search the public web (canned results)."""
        counter["web.search"] += 1
        return WebResult(query=query, hits=[WebHit(title=query, url="https://example.org/")])

    @server.tool(name="résumé.parse")
    def parse_resume(body: str) -> ParsedResume:
        """Parse a résumé (a tool whose name is not ASCII)."""
        counter["résumé.parse"] += 1
        words = body.split()
        return ParsedResume(words=len(words), skills=sorted({w.strip(".,") for w in words if w.istitle()}))


# --- the ``conformance`` profile ----------------------------------------------------------------

class Echoed(BaseModel):
    text: str
    length: int


class PatientRecord(BaseModel):
    patient_id: str
    diagnosis: str


class Sent(BaseModel):
    to: str
    accepted: bool


def _conformance_tools(server: MCPServer, counter: CallCounter, names: ConformanceTools) -> None:
    @server.tool(name=names.allowed_tool)
    def echo(text: str) -> Echoed:
        """Echo the text back as structured content."""
        counter[names.allowed_tool] += 1
        return Echoed(text=text, length=len(text))

    @server.tool(name=names.denied_tool)
    def delete_records(text: str = "") -> str:
        """Destructive; the conformance bundle forbids it."""
        counter[names.denied_tool] += 1
        return f"deleted {text}"

    @server.tool(name=names.uncatalogued_tool)
    def shadow(text: str = "") -> str:
        """Not in the catalog: must never run through a conforming gateway."""
        counter[names.uncatalogued_tool] += 1
        return f"shadow {text}"

    @server.tool(name=names.phi_tool)
    def read_patient_record(patient_id: str) -> PatientRecord:
        """Returns PHI."""
        counter[names.phi_tool] += 1
        return PatientRecord(patient_id=patient_id, diagnosis="J45.909")

    @server.tool(name=names.external_tool)
    def send_external_email(to: str, body: str = "") -> Sent:
        """Sends data outside the organisation."""
        counter[names.external_tool] += 1
        return Sent(to=to, accepted=True)

    @server.tool(name=names.non_ascii_tool)
    def lire(text: str = "") -> Echoed:
        """A tool whose name is not ASCII."""
        counter[names.non_ascii_tool] += 1
        return Echoed(text=text, length=len(text))

    @server.resource(names.resource, mime_type="text/plain")
    def public_note() -> str:
        counter[names.resource] += 1
        return "a public note"

    @server.resource(names.uncatalogued_resource, mime_type="text/plain")
    def secret_note() -> str:
        """Not in the catalog: must never be read through a conforming gateway."""
        counter[names.uncatalogued_resource] += 1
        return "a secret note"

    @server.prompt(name=names.prompt)
    def greeting(name: str = "agent") -> str:
        counter[names.prompt] += 1
        return f"Greet {name}."


# --- one server, by profile -----------------------------------------------------------------------

_SERVER_NAMES = {
    "test": "cmcp-test-upstream",
    "bench": "cmcp-bench-upstream",
    "demo": "cmcp-demo-upstream",
    "conformance": "cmcp-conformance-upstream",
}
PROFILES: tuple[str, ...] = tuple(_SERVER_NAMES)


def build_server(
    profile: str = "test", conformance_tools: ConformanceTools | None = None
) -> tuple[MCPServer, CallCounter]:
    """The MCP server of ``profile`` and the counter its tools increment (one count per execution)."""
    if profile not in _SERVER_NAMES:
        raise ValueError(f"unknown upstream profile {profile!r}; one of {', '.join(PROFILES)}")
    # WARNING, not the SDK's default INFO: at INFO the SDK configures root logging (through rich
    # when installed) and logs every request, which the benchmarks would measure as our overhead.
    server = MCPServer(_SERVER_NAMES[profile], log_level="WARNING")
    counter = CallCounter()
    adders: dict[str, Callable[[], None]] = {
        "test": lambda: _test_profile(server, counter),
        "bench": lambda: _bench_tools(server, counter),
        "demo": lambda: _demo_tools(server, counter),
        "conformance": lambda: _conformance_tools(server, counter, conformance_tools or ConformanceTools()),
    }
    adders[profile]()
    return server, counter


def build_app(
    guard: Any = None, *, profile: str = "test", json_response: bool = True,
    conformance_tools: ConformanceTools | None = None,
) -> tuple[ASGIApp, CallCounter]:
    """``profile``'s app (behind ``guard``, a ``cmcp_guard`` Guard, when given) with ``GET /calls``."""
    server, counter = build_server(profile, conformance_tools)
    options = BENCH_SESSION_LIMITS if profile == "bench" else {}
    return counted_app(server, counter, guard, json_response=json_response, **options), counter


@dataclass
class RunningUpstream:
    url: str
    counter: CallCounter
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def run_upstream(
    guard: Any = None, *, json_response: bool = True, port: int | None = None, host: str = "127.0.0.1",
    profile: str = "test",
) -> AsyncIterator[RunningUpstream]:
    """The upstream in this event loop on a free port; ``up.url`` is its MCP endpoint."""
    app, counter = build_app(guard, profile=profile, json_response=json_response)
    port = port or free_port()
    async with serving(server_config(app, host, port)) as server:
        yield RunningUpstream(url=f"http://{host}:{port}/mcp", counter=counter, server=server)


def _guard_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """The product guard for ``--guard-*`` and appraisal options (None without ``--guard-audience``).

    Imported here, not at module top: an unguarded upstream (the common case) then does not load
    the guard's attestation stack."""
    if not args.guard_audience:
        return None
    from cmcp_guard.main import build_guard

    if not args.expected_bundle_hash:
        parser.error("--guard-audience needs --expected-bundle-hash: pinning is mandatory")
    options: dict[str, Any] = {}
    refresh = getattr(args, "guard_refresh_seconds", None)  # callers with their own parser omit it
    if refresh is not None:
        options["refresh_seconds"] = refresh
    return build_guard(
        args.guard_audience,
        args.guard_enclave,
        appraisal=appraisal_options.from_args(args, parser),
        expected=Expected(bundle_hashes=frozenset(args.expected_bundle_hash)),
        **options,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmcp-devkit-upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="test")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument("--guard-audience", help="enable the cmcp guard for this audience")
    parser.add_argument("--guard-enclave", action="append", default=[], help="HOST:PORT to attest")
    parser.add_argument("--expected-bundle-hash", action="append", default=[])
    appraisal_options.add_arguments(parser)
    parser.add_argument("--guard-refresh-seconds", type=float, default=None)
    parser.add_argument("--sse", action="store_true", help="answer in SSE instead of JSON")
    args = parser.parse_args(argv)
    app, _ = build_app(_guard_from_args(args, parser), profile=args.profile, json_response=not args.sse)
    quiet: dict[str, Any] = {"access_log": False} if args.profile == "bench" else {}
    note = args.profile + ("+guard" if args.guard_audience else "")
    return run_until_stopped(app, args.listen, note=note, **quiet)


if __name__ == "__main__":
    sys.exit(main())
