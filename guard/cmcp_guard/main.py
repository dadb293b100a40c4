"""``cmcp-guard --listen HOST:PORT --upstream URL --audience AUD --enclave HOST:PORT ...``."""

from __future__ import annotations

import argparse

import uvicorn
from prometheus_client import start_http_server

from cmcp_core import logs
from cmcp_core.attestation import AttestPolicy
from cmcp_guard.check import PermitChecker
from cmcp_guard.middleware import Guard
from cmcp_guard.proxy import build_proxy
from cmcp_guard.trust import TrustStore


def build_guard(
    audience: str,
    enclaves: list[str],
    *,
    allow_simulated: bool = False,
    expected_bundle_hashes: frozenset[str] | None = None,
    refresh_seconds: float = 30.0,
) -> Guard:
    """The gate the middleware and the proxy share: keys only from our own attestation."""
    trust = TrustStore(
        enclaves,
        AttestPolicy(
            allow_simulated=allow_simulated, expected_bundle_hashes=expected_bundle_hashes, audience=audience
        ),
        refresh_seconds=refresh_seconds,
    )
    checker = PermitChecker(audience=audience, keys=trust.keys, allowed_bundles=expected_bundle_hashes)
    return Guard(checker, trust)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cmcp-guard", description="cMCP upstream guard (verifying proxy)")
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:9001")
    parser.add_argument("--audience", required=True, help="this upstream's permit audience")
    parser.add_argument("--enclave", action="append", required=True, help="enclave HOST:PORT to attest")
    parser.add_argument("--allow-simulated", action="store_true", help="accept software-only evidence")
    parser.add_argument("--expected-bundle-hash", action="append", default=[])
    parser.add_argument("--refresh-seconds", type=float, default=30.0)
    parser.add_argument("--metrics-listen", help="HOST:PORT for /metrics")
    args = parser.parse_args(argv)
    logs.setup()
    hashes = frozenset(args.expected_bundle_hash) or None
    guard = build_guard(
        args.audience,
        args.enclave,
        allow_simulated=args.allow_simulated,
        expected_bundle_hashes=hashes,
        refresh_seconds=args.refresh_seconds,
    )
    if args.metrics_listen:
        mhost, _, mport = args.metrics_listen.rpartition(":")
        start_http_server(int(mport), addr=mhost)
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(
        build_proxy(args.upstream, guard), host=host, port=int(port), log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
