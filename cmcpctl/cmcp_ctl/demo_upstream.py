"""The demo's upstream: an official ``mcp`` SDK server with the tools of ``examples/realistic``.

Why a separate server from the conformance upstream: the demo tells a story about regulated
data (a CRM returning PII, an EHR returning PHI, a mailer that sends outside the company), so
its tool names and arguments must match ``examples/realistic/catalog.json`` exactly; the
conformance upstream serves the conformance bundle's tools instead.

It also implements one tool the catalog does *not* name (``crm.export_all_customers``): a
gateway that forwarded it anyway would make it run, so the demo can show it never does.

Every execution is counted; ``GET /calls`` (served beside the MCP app, never guarded, runs no
tool) returns ``{"total": n, "by_tool": {...}}``, which is how the demo proves that a refused
call did not execute. The data is fictitious.

Run: ``python -m cmcp_ctl.demo_upstream --listen 127.0.0.1:0``; prints ``READY <mcp url>``
once serving. In the demo it runs unguarded on loopback behind the ``cmcp-guard`` reverse
proxy, which is the only address the gateway is given.
"""

from __future__ import annotations

import argparse
import sys

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel
from starlette.types import ASGIApp

from cmcp_conformance.serving import CallCounter, counted_app, run_until_stopped

UNCATALOGUED_TOOL = "crm.export_all_customers"


class Customer(BaseModel):
    customer_id: str
    name: str
    email: str
    phone: str
    tier: str


class PatientRecord(BaseModel):
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
    to: str
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


class SearchHit(BaseModel):
    title: str
    url: str


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]


class ParsedResume(BaseModel):
    words: int
    skills: list[str]


def build_server() -> tuple[MCPServer, CallCounter]:
    """The MCP server and the counter its tools increment (one count per execution)."""
    server = MCPServer("cmcp-demo-upstream")
    counter = CallCounter()

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

    @server.tool(name=UNCATALOGUED_TOOL)
    def export_all_customers() -> list[Customer]:
        """Dump every customer. Not in the measured catalog: must never run through cMCP."""
        counter[UNCATALOGUED_TOOL] += 1
        return [lookup_customer("C-0001"), lookup_customer("C-0002")]

    @server.tool(name="ehr.read_patient_record")
    def read_patient_record(patient_id: str) -> PatientRecord:
        """Read a patient's medical record (returns PHI)."""
        counter["ehr.read_patient_record"] += 1
        return PatientRecord(
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
    def send_external(to: str, subject: str = "", body: str = "") -> Delivery:
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
    def web_search(query: str) -> SearchResult:
        """Search the public web (canned results)."""
        counter["web.search"] += 1
        return SearchResult(query=query, hits=[SearchHit(title=query, url="https://example.org/")])

    @server.tool(name="résumé.parse")
    def parse_resume(body: str) -> ParsedResume:
        """Parse a résumé (a tool whose name is not ASCII)."""
        counter["résumé.parse"] += 1
        words = body.split()
        return ParsedResume(words=len(words), skills=sorted({w.strip(".,") for w in words if w.istitle()}))

    return server, counter


def build_app() -> tuple[ASGIApp, CallCounter]:
    """The streamable-HTTP MCP app with ``GET /calls`` beside it."""
    server, counter = build_server()
    return counted_app(server, counter), counter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmcp-demo-upstream", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    # Accepted for command-line compatibility with the conformance upstream, which the shared
    # launcher starts with --no-guard; this server never wraps itself in a guard.
    parser.add_argument("--no-guard", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    app, _ = build_app()
    return run_until_stopped(app, args.listen)


if __name__ == "__main__":
    sys.exit(main())
