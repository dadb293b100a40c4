"""The conformance upstream: an official ``mcp`` SDK server behind the cMCP guard middleware.

Its tools match the conformance bundle, plus one tool the catalog does not name (a gateway
that forwards it anyway makes it run, which is what POLICY-001 watches for). Every tool
execution increments a counter served at ``GET /calls`` outside the guard (reading it runs no
tool), so the suite can prove that a refused call never executed.

Run: ``python -m cmcp_conformance.upstream --listen 127.0.0.1:0 --audience AUD --enclave
HOST:PORT [--allow-simulated] [--expected-bundle-hash H] [--no-guard]``; prints
``READY <mcp url>`` once serving. ``--no-guard`` exists only so the suite can model a host
reaching an *unprotected* server; the conformance target always runs it guarded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel
from starlette.types import ASGIApp

from cmcp_conformance.serving import CallCounter, counted_app, run_until_stopped
from cmcp_conformance.target import Profile


class Echoed(BaseModel):
    text: str
    length: int


class PatientRecord(BaseModel):
    patient_id: str
    diagnosis: str


class Sent(BaseModel):
    to: str
    accepted: bool


def build_server(profile: Profile | None = None) -> tuple[MCPServer, CallCounter]:
    prof = profile or Profile()
    server = MCPServer("cmcp-conformance-upstream")
    counter = CallCounter()

    @server.tool(name=prof.allowed_tool)
    def echo(text: str) -> Echoed:
        """Echo the text back as structured content."""
        counter[prof.allowed_tool] += 1
        return Echoed(text=text, length=len(text))

    @server.tool(name=prof.denied_tool)
    def delete_records(text: str = "") -> str:
        """Destructive; the conformance bundle forbids it."""
        counter[prof.denied_tool] += 1
        return f"deleted {text}"

    @server.tool(name=prof.uncatalogued_tool)
    def shadow(text: str = "") -> str:
        """Not in the catalog: must never run through a conforming gateway."""
        counter[prof.uncatalogued_tool] += 1
        return f"shadow {text}"

    @server.tool(name=prof.phi_tool)
    def read_patient_record(patient_id: str) -> PatientRecord:
        """Returns PHI."""
        counter[prof.phi_tool] += 1
        return PatientRecord(patient_id=patient_id, diagnosis="J45.909")

    @server.tool(name=prof.external_tool)
    def send_external_email(to: str, body: str = "") -> Sent:
        """Sends data outside the organisation."""
        counter[prof.external_tool] += 1
        return Sent(to=to, accepted=True)

    @server.tool(name=prof.non_ascii_tool)
    def lire(text: str = "") -> Echoed:
        """A tool whose name is not ASCII."""
        counter[prof.non_ascii_tool] += 1
        return Echoed(text=text, length=len(text))

    return server, counter


def build_guard(
    audience: str,
    enclaves: list[str],
    *,
    allow_simulated: bool,
    expected_bundle_hashes: frozenset[str] | None,
) -> Any:
    """The product guard (``cmcp_guard``): it attests the enclaves itself and checks permits."""
    from cmcp_guard.main import build_guard as product_guard

    return product_guard(
        audience,
        enclaves,
        allow_simulated=allow_simulated,
        expected_bundle_hashes=expected_bundle_hashes,
        refresh_seconds=5.0,
    )


def build_app(guard: Any = None, profile: Profile | None = None) -> tuple[ASGIApp, CallCounter]:
    """The conformance tools' app (behind ``guard`` when given) and the counter they increment."""
    server, counter = build_server(profile)
    return counted_app(server, counter, guard), counter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cmcp-conformance-upstream", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--audience", help="guard audience (the upstream identity permits name)")
    parser.add_argument("--enclave", action="append", default=[], help="HOST:PORT the guard attests")
    parser.add_argument("--allow-simulated", action="store_true")
    parser.add_argument("--expected-bundle-hash", action="append", default=[])
    parser.add_argument("--no-guard", action="store_true")
    args = parser.parse_args(argv)
    if not args.no_guard and not (args.audience and args.enclave):
        parser.error("a guarded upstream needs --audience and --enclave")
    hashes = frozenset(args.expected_bundle_hash) or None
    guard = (
        None
        if args.no_guard
        else build_guard(
            args.audience, args.enclave, allow_simulated=args.allow_simulated, expected_bundle_hashes=hashes
        )
    )
    app, _ = build_app(guard)
    return run_until_stopped(app, args.listen)


if __name__ == "__main__":
    sys.exit(main())
