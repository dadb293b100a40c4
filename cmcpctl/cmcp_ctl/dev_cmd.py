"""``cmcpctl dev up``: try a policy bundle against your own MCP server, on this machine, in one command.

It starts, on 127.0.0.1, an enclave on the simulated TEE with the bundle (under initdata the
launcher measured, as ``cmcpctl demo`` does), a ``cmcp-guard`` in front of the MCP server you
name (which it did not start and never stops) and the gateway; once all three are ready it
prints ONE JSON line on stdout: the gateway's MCP URL, the bearer token your MCP client sends,
the route, and the components' pids and addresses. Ctrl-C or SIGTERM stops everything it
started and exits 0. The launcher is the dev kit's (:class:`cmcp_devkit.stack.LocalStack`), the
same one the demo, the conformance target and the benchmarks stand on.

Only calls the bundle allows reach your server: the guard in front of it runs nothing without a
permit the attested enclave signed. Point your client at the gateway, not at the guard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from cmcp_core.bundle import BundleError, load_bundle
from cmcp_core.validation import validate_bundle
from cmcp_devkit.initdata import render_initdata
from cmcp_devkit.stack import LaunchError, LocalStack

DEFAULT_ROUTE = "dev"
DEFAULT_AUDIENCE = "urn:cmcp:dev-upstream"
DEFAULT_PRINCIPAL = "dev-agent"
DEV_ENCLAVE_IMAGE = "ghcr.io/cmcp/enclave@sha256:" + "0" * 64  # by digest, like every enclave image
DEFAULT_PERMIT_TTL = 60
_ROUTE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

UP_DESCRIPTION = """Run a bundle against your own MCP server, locally, on the simulated TEE.

Starts an enclave with the bundle, a guard in front of the MCP server at --upstream (which
cmcpctl did not start and does not stop) and the gateway. When all are ready it prints one JSON
line on stdout:

  {"mcp_url": ..., "token": ..., "route": ..., "principal": ..., "bundle_hash": ...,
   "enclave": {...}, "guard": {...}, "gateway": {...}, "workdir": ...}

Connect your MCP client (streamable HTTP) to mcp_url with "Authorization: Bearer <token>".
Ctrl-C or SIGTERM stops every process it started (exit 0). Component logs are in workdir.
Simulated TEE only: for trying policies, never for production.
"""

UP_EXAMPLES = """Examples:
  # Your MCP server listens on http://127.0.0.1:8000/mcp
  cmcpctl dev up --bundle examples/realistic --upstream http://127.0.0.1:8000/mcp

  # Keep the logs and name the route
  cmcpctl dev up --bundle ./my-bundle --upstream http://127.0.0.1:8000/mcp --route crm --workdir ./dev-run
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="Run cMCP locally against your own MCP server",
        description="Local development commands (simulated TEE, processes on 127.0.0.1).",
        usage="cmcpctl dev <subcommand> [flags]",
    )
    sub = parser.add_subparsers(dest="dev_command", metavar="<subcommand>")
    up = sub.add_parser(
        "up",
        help="Start an enclave with a bundle, a guard in front of your MCP server, and the gateway",
        description=UP_DESCRIPTION,
        epilog=UP_EXAMPLES,
        usage="cmcpctl dev up --bundle DIR --upstream URL [flags]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--bundle", metavar="DIR", required=True, help="policy bundle directory")
    up.add_argument("--upstream", metavar="URL", required=True,
                    help="your MCP server's streamable-HTTP URL, e.g. http://127.0.0.1:8000/mcp")
    up.add_argument("--route", default=DEFAULT_ROUTE,
                    help=f"gateway route name; the MCP URL ends in /mcp/ROUTE (default: {DEFAULT_ROUTE})")
    up.add_argument("--audience", default=DEFAULT_AUDIENCE,
                    help=f"permit audience of your server (default: {DEFAULT_AUDIENCE})")
    up.add_argument("--principal", default=DEFAULT_PRINCIPAL,
                    help=f"who the gateway says the token's holder is (default: {DEFAULT_PRINCIPAL})")
    up.add_argument("--token", help="bearer token to accept (default: a new random one, printed)")
    up.add_argument("--permit-ttl", type=int, default=DEFAULT_PERMIT_TTL, metavar="SECONDS",
                    help=f"lifetime of the enclave's permits (default: {DEFAULT_PERMIT_TTL})")
    up.add_argument("--workdir", metavar="DIR",
                    help="folder for initdata, configs and component logs (default: a temporary folder, "
                    "removed on exit)")
    up.set_defaults(func=run_up)
    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), 2)[1])


def _split_upstream(url: str) -> tuple[str, str]:
    """``(base, path)`` of an MCP URL: the guard proxies to ``base`` and keeps ``path``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--upstream must be an http(s) URL, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}", parts.path or "/"


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        work = Path(path).resolve()
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="cmcp-dev-") as tmp:
        yield Path(tmp)


class _StopSignal:
    """Ctrl-C or SIGTERM: remember it and wake the waiting thread (handlers restored on exit)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.event.set()

    def __enter__(self) -> _StopSignal:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _ready_line(stack: LocalStack, route: str, bundle_hash: str) -> dict[str, Any]:
    enclave = stack.enclaves[route]
    by_name = {proc.name: proc for proc in stack.procs}
    return {
        "mcp_url": f"{stack.gateway_url}/mcp/{route}",
        "token": stack.token,
        "route": route,
        "principal": stack.agent,
        "bundle_hash": bundle_hash,
        "enclave": {"address": enclave.address, "pid": enclave.proc.popen.pid},
        "guard": {"url": stack.upstream_url, "pid": by_name["guard"].popen.pid},
        "gateway": {"url": stack.gateway_url, "pid": by_name["gateway"].popen.pid},
        "upstream": stack.raw_upstream_base,
        "workdir": str(stack.workdir),
    }


def run_up(args: argparse.Namespace) -> int:
    """Entry point of ``cmcpctl dev up``; returns the exit code."""
    if not _ROUTE_NAME.match(args.route):
        print(f"error: --route must be a DNS label (lowercase letters, digits, '-'), got {args.route!r}",
              file=sys.stderr)
        return 2
    try:
        upstream_base, mcp_path = _split_upstream(args.upstream)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bundle_dir = Path(args.bundle).resolve()
    try:
        problems = validate_bundle(load_bundle(bundle_dir))
    except BundleError as exc:
        print(f"error: cannot load the bundle {bundle_dir}: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(f"error: the bundle has {len(problems)} validation error(s); run `cmcpctl bundle validate "
              f"{args.bundle}`", file=sys.stderr)
        return 2

    with _StopSignal() as stop, _workdir(args.workdir) as work:
        options: dict[str, Any] = {"workdir": work, "audience": args.audience, "agent": args.principal,
                                   "permit_ttl": args.permit_ttl}
        if args.token:
            options["token"] = args.token
        stack = LocalStack(**options)
        try:
            initdata = render_initdata(bundle_dir, route=f"dev/{args.route}", audience=args.audience,
                                       image=DEV_ENCLAVE_IMAGE)
            stack.start_enclave_on(args.route, bundle_dir, initdata)
            stack.raw_upstream_base = upstream_base
            stack.start_guard(upstream_base, mcp_path)
            stack.start_gateway()
            if stop.event.is_set():
                return 0
            line = _ready_line(stack, args.route, str(stack.enclaves[args.route].ready["bundle_hash"]))
            print(json.dumps(line), flush=True)
            # Wake up now and then: a component that dies ends the run (exit 1), with its log's tail.
            while not stop.event.wait(0.5):
                dead = next((proc for proc in stack.procs if not proc.alive()), None)
                if dead is not None:
                    print(f"error: {dead.name} exited ({dead.popen.returncode}):\n{dead.output()}",
                          file=sys.stderr)
                    return 1
            return 0
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stack.close()
