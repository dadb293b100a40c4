"""Token verification benchmark: :meth:`IdentityPolicy.verify`, uncached and cached, p50/p99 in µs.

``python -m bench.identity [--iterations 2000] [--cached-iterations 20000]``

The enclave proves an agent's identity by verifying its OAuth access token (a JWT) against the
measured bundle's ``identity`` section (``cmcp_core.identity``), for each of RS256 (RSA 2048),
ES256 (P-256) and EdDSA (Ed25519), with tokens signed by a development issuer
(``cmcp_devkit.issuer.DevIssuer``):

* ``uncached``: every iteration verifies a token not seen before (the tokens are signed before
  timing starts, so signing is not measured): header and claims decoding, the signature, the
  claims and times, the SHA-256 digest and the cache insertion — what the first call with a
  new token costs;
* ``cached``: the same token verified again — one SHA-256 of the token, one dict lookup, one
  expiry check — what every later call with that token costs.

Writes ``bench/results/identity.json``. Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, machine_description, summarize, utc_now, write_json
from cmcp_core.identity import IdentityPolicy
from cmcp_devkit.issuer import RESOURCE, DevIssuer, identity_section

ALGORITHMS = ("RS256", "ES256", "EdDSA")
WARMUP = 20


def _policy(issuer: DevIssuer) -> IdentityPolicy:
    policy = IdentityPolicy.from_manifest({"identity": identity_section(issuer)})
    assert policy is not None
    return policy


def bench_uncached(issuer: DevIssuer, iterations: int, now: float) -> dict[str, Any]:
    """Verify ``iterations`` distinct tokens once each (a cache miss every time)."""
    policy = _policy(issuer)
    tokens = [issuer.token(f"agent-{i % 16}", now=now, jti=f"bench-{i}") for i in range(iterations + WARMUP)]
    expected = policy.verify(tokens[0], now)  # a benchmark of a failing path would measure the wrong thing
    if expected.issuer != issuer.issuer:
        raise SystemExit(f"{issuer.alg}: the token did not verify as the issuer's")
    for token in tokens[1:WARMUP]:
        policy.verify(token, now)
    samples = []
    for token in tokens[WARMUP:]:
        t0 = time.perf_counter_ns()
        policy.verify(token, now)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return summarize(samples, "us")


def bench_cached(issuer: DevIssuer, iterations: int, now: float) -> dict[str, Any]:
    """Verify one token again and again after its first verification (a cache hit every time)."""
    policy = _policy(issuer)
    token = issuer.token("agent-0", now=now)
    policy.verify(token, now)
    for _ in range(WARMUP * 10):
        policy.verify(token, now)
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        policy.verify(token, now)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return summarize(samples, "us")


def measure(iterations: int, cached_iterations: int) -> dict[str, Any]:
    """``{alg: {"uncached": summary, "cached": summary, "token_bytes": n}}`` for every algorithm."""
    now = time.time()
    out: dict[str, Any] = {}
    for alg in ALGORITHMS:
        issuer = DevIssuer(alg=alg)
        out[alg] = {"token_bytes": len(issuer.token("agent-0", now=now)),
                    "uncached": bench_uncached(issuer, iterations, now),
                    "cached": bench_cached(issuer, cached_iterations, now)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=2000, help="uncached verifications per algorithm")
    parser.add_argument("--cached-iterations", type=int, default=20000,
                        help="cached verifications per algorithm")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "identity.json")
    args = parser.parse_args(argv)
    results = measure(args.iterations, args.cached_iterations)
    write_json(
        args.out,
        {
            "benchmark": "identity",
            "at": utc_now(),
            "machine": machine_description(),
            "iterations": args.iterations,
            "cached_iterations": args.cached_iterations,
            "audience": RESOURCE,
            "definition": "cmcp_core.identity.IdentityPolicy.verify(token, now) in-process; uncached: a "
                          "token not seen before (signature, claims, digest, cache insertion); cached: "
                          "the same token again (SHA-256 + dict lookup + expiry check)",
            "results": results,
        },
    )
    for alg, r in results.items():
        for case in ("uncached", "cached"):
            s = r[case]
            print(f"{alg:6s} {case:8s} p50 {s['p50']:9.2f} us   p99 {s['p99']:9.2f} us   (n={s['n']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
