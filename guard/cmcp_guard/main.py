"""``cmcp-guard --upstream URL --audience AUD (--enclave HOST:PORT ... | --route NS/NAME)
--release-manifest PATH --release-key PATH [--expected-bundle-hash H ...]``."""

from __future__ import annotations

import argparse
import logging
import sqlite3
from dataclasses import replace

import uvicorn
from prometheus_client import start_http_server

from cmcp_core import appraisal_options, logs
from cmcp_core.attestation import ENFORCE_ONLY, AttestPolicy, Expected
from cmcp_core.errors import CmcpError
from cmcp_core.http_front import BoundedHttpToolsProtocol, FrontDoorLimits, bounded
from cmcp_core.permit import CLOCK_SKEW_SECONDS
from cmcp_core.route_source import McpRouteSource
from cmcp_core.route_status import RouteReader, RouteRef
from cmcp_core.stop_signals import GRACE_SECONDS, exit_on_stop_signals
from cmcp_core.verify import AppraisalPolicy
from cmcp_guard.check import PermitChecker
from cmcp_guard.lifetime import DEFAULT_CLOCK_SKEW_SECONDS, LifetimePolicy
from cmcp_guard.metrics import FRONT_DOOR_REFUSALS
from cmcp_guard.middleware import Guard
from cmcp_guard.proxy import build_proxy
from cmcp_guard.spent import MEMORY, SpentPermits, open_spent_store
from cmcp_guard.trust import DEFAULT_GRACE_SECONDS, DEFAULT_PERMIT_TTL_SECONDS, TrustStore

log = logging.getLogger("cmcp.guard")


def build_guard(
    audience: str,
    enclaves: list[str],
    *,
    appraisal: AppraisalPolicy,
    expected: Expected,
    refresh_seconds: float = 30.0,
    source: RouteReader | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    spent: SpentPermits | None = None,
    lifetime: LifetimePolicy | None = None,
) -> Guard:
    """The gate the middleware and the proxy share: keys only from our own attestation.

    ``source`` (e.g. ``McpRouteSource(route).read``) adds addresses to attest on every refresh and
    pins the route's initdata; it never supplies keys. ``expected`` must pin a bundle or follow a
    route, and its audience is forced to ours. ``spent`` defaults to this process's memory: replicas and
    restarts need a shared store (``open_spent_store("sqlite:PATH", ...)``).
    """
    if not expected.bundle_hashes and source is None:
        raise ValueError("pinning is mandatory: give expected bundle hashes or a route to follow")
    trust = TrustStore(
        enclaves,
        AttestPolicy(appraisal=appraisal, expected=replace(expected, audience=audience)),
        source=source,
        refresh_seconds=refresh_seconds,
        grace_seconds=grace_seconds,
    )
    checker = PermitChecker(
        audience=audience,
        keys=trust.keys,
        allowed_bundles=expected.bundle_hashes or None,
        replay=spent,
        lifetime=lifetime,
    )
    return Guard(checker, trust)


def _route(text: str) -> RouteRef:
    try:
        return RouteRef.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> None:
    exit_on_stop_signals()  # a stop during start-up ends the process, also as a container's PID 1
    parser = argparse.ArgumentParser(prog="cmcp-guard", description="cMCP upstream guard (verifying proxy)")
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:9001")
    parser.add_argument("--audience", required=True, help="this upstream's permit audience")
    parser.add_argument("--enclave", action="append", default=[], help="enclave HOST:PORT to attest")
    parser.add_argument(
        "--route", type=_route, help="NAMESPACE/NAME of an McpRoute whose status.pods[] addresses to attest"
    )
    parser.add_argument("--kubeconfig", help="for --route: kubeconfig path (default $KUBECONFIG, in-cluster)")
    parser.add_argument("--expected-bundle-hash", action="append", default=[],
                        help="bundle hash an enclave must be measured with (repeatable; or --route)")
    parser.add_argument("--expected-catalog-hash", action="append", default=[],
                        help="catalog hash an enclave must be measured with (repeatable; "
                        "`cmcpctl bundle hash --catalog`): the bundle hash leaves the catalog out")
    parser.add_argument("--expected-mode", action="append", choices=["enforce", "advisory"],
                        help="enforcement mode an enclave may run in (repeatable; default: enforce only)")
    appraisal_options.add_arguments(parser)
    parser.add_argument("--refresh-seconds", type=float, default=10.0, help="re-list and re-attest interval")
    parser.add_argument(
        "--permit-ttl-seconds",
        type=int,
        default=DEFAULT_PERMIT_TTL_SECONDS,
        help="the enclaves' --permit-ttl: the longest permit lifetime (exp - iat) accepted, "
        "and how long a pod that left the route keeps its key",
    )
    parser.add_argument(
        "--clock-skew-seconds",
        type=int,
        default=DEFAULT_CLOCK_SKEW_SECONDS,
        help="how far a permit's iat may be from this guard's own clock (the host sets the enclave's)",
    )
    parser.add_argument(
        "--spent-store",
        default=MEMORY,
        help="where spent permit nonces live: 'memory' (this process only, forgotten on restart), "
        "'sqlite:PATH' (a file on a local volume every replica on the node shares; survives restarts) or "
        "'postgresql://USER@HOST/DB' (one database every replica on every node shares)",
    )
    parser.add_argument("--metrics-listen", help="HOST:PORT for /metrics")
    front = FrontDoorLimits()
    parser.add_argument("--max-header-bytes", type=int, default=front.max_header_bytes,
                        help="request line and headers, at most (431 HEADERS_TOO_LARGE beyond)")
    parser.add_argument("--max-headers", type=int, default=front.max_headers, help="header fields, at most")
    parser.add_argument("--header-timeout-seconds", type=float, default=front.header_timeout_seconds,
                        help="from the connection (or request) start to the end of its headers (408 beyond)")
    parser.add_argument("--body-timeout-seconds", type=float, default=front.body_timeout_seconds,
                        help="from the end of the headers to the end of the body (408 beyond)")
    parser.add_argument("--max-connections", type=int, default=front.max_connections,
                        help="connections served at once (503 beyond)")
    args = parser.parse_args(argv)
    if not args.enclave and args.route is None:
        parser.error("give --enclave HOST:PORT and/or --route NAMESPACE/NAME")
    if not args.expected_bundle_hash and args.route is None:
        parser.error("pinning is mandatory: give --expected-bundle-hash and/or --route NAMESPACE/NAME")
    appraisal = appraisal_options.from_args(args, parser)
    if args.kubeconfig and args.route is None:
        parser.error("--kubeconfig only applies to --route")
    if args.permit_ttl_seconds <= 0 or args.clock_skew_seconds < 0:
        parser.error("--permit-ttl-seconds must be positive and --clock-skew-seconds not negative")
    lifetime = LifetimePolicy(max_ttl=args.permit_ttl_seconds, skew=args.clock_skew_seconds)
    try:
        spent = open_spent_store(args.spent_store, lifetime.retention_seconds)
    except (ValueError, OSError, sqlite3.Error, CmcpError) as exc:
        parser.error(f"--spent-store: {exc}")
    logs.setup()
    if args.spent_store == MEMORY:
        log.warning("spent permits are kept in this process only: replicas and restarts can replay a permit")
    expected = Expected(
        bundle_hashes=frozenset(args.expected_bundle_hash),
        catalog_hashes=frozenset(args.expected_catalog_hash),
        route=str(args.route) if args.route is not None else None,
        modes=frozenset(args.expected_mode) if args.expected_mode else ENFORCE_ONLY,
    )
    source = McpRouteSource(args.route, args.kubeconfig).read if args.route is not None else None
    guard = build_guard(
        args.audience,
        args.enclave,
        appraisal=appraisal,
        expected=expected,
        refresh_seconds=args.refresh_seconds,
        source=source,
        grace_seconds=float(args.permit_ttl_seconds + CLOCK_SKEW_SECONDS),
        spent=spent,
        lifetime=lifetime,
    )
    if args.metrics_listen:
        mhost, _, mport = args.metrics_listen.rpartition(":")
        start_http_server(int(mport), addr=mhost)
    host, _, port = args.listen.rpartition(":")
    try:
        front = FrontDoorLimits(args.max_header_bytes, args.max_headers, args.header_timeout_seconds,
                                args.body_timeout_seconds, args.max_connections)
    except ValueError as exc:
        parser.error(str(exc))
    uvicorn.run(
        build_proxy(args.upstream, guard), host=host, port=int(port), log_level="warning", access_log=False,
        loop="uvloop",  # docs/adr/0020-uvloop-everywhere.md
        http=bounded(BoundedHttpToolsProtocol, front, _count_refusal),
        limit_concurrency=front.max_connections,
        timeout_graceful_shutdown=GRACE_SECONDS,  # SIGTERM: in-flight requests finish, bounded
    )


def _count_refusal(reason: str) -> None:
    FRONT_DOOR_REFUSALS.labels(reason).inc()


if __name__ == "__main__":
    main()
