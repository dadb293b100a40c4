"""Verifier benchmark: appraisal time per evidence type, p50/p99.

``python -m bench.verify [--iterations 300]``

* ``tdx``: the real Intel quote through :func:`appraise_evidence` (parser, canonical-PCK and
  root pin, dcap-qvl with pre-loaded collateral, TCB policy) at a pinned time;
* ``tdx_collateral_json``: the same, loading collateral from JSON each time (the CLI path);
* ``snp``: the real Azure report: VCEK ECDSA P-384, VCEK <- ASK <- pinned ARK RSA-PSS, TCB
  extensions, Azure runtime-data check;
* ``simulated_full``: :func:`appraise_attestation` on a simulated quote — parse, simulator
  signature, initdata digest, claims, REPORT_DATA binding (the operator's per-pod path).

Writes ``bench/results/verify.json``. Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dcap_qvl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import RESULTS_DIR, machine_description, summarize, utc_now, write_json
from cmcp_core import initdata
from cmcp_core.binding import Binding
from cmcp_core.crypto import public_bytes, public_jwk
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_attestation, appraise_evidence
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_release, release_of

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def _time(fn: Callable[[], Verdict], iterations: int) -> dict[str, Any]:
    first = fn()
    if not first.passed:  # a benchmark of a failing path would measure the wrong thing
        raise SystemExit(f"baseline did not pass: {first.code} {first.message}")
    for _ in range(min(20, iterations)):
        fn()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(samples, "ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "verify.json")
    args = parser.parse_args(argv)

    quote = (DATA / "tdx" / "tdx_quote").read_bytes()
    coll_json = (DATA / "tdx" / "tdx_quote_collateral.json").read_text()
    coll = dcap_qvl.QuoteCollateralV3.from_json(coll_json)
    issue = json.loads(json.loads(coll_json)["tcb_info"])["issueDate"]
    tdx_now = int(datetime.fromisoformat(issue.replace("Z", "+00:00")).timestamp()) + 3600
    snp = (DATA / "snp-azure" / "evidence.json").read_bytes()
    snp_now = int(datetime(2026, 8, 1, tzinfo=UTC).timestamp())
    assert base64.b64decode(json.loads(snp)["snp_report"])

    key = Ed25519PrivateKey.generate().public_key()
    nonce = os.urandom(32)
    entry = initdata.CmcpEntry("sha256:" + "ab" * 32, "sha256:" + "cd" * 32, "enforce", "b/r", "http://up")
    toml = initdata.render(entry, image=TEST_IMAGE, command=["cmcp-enclave"])
    rd = Binding(public_bytes(key), entry.bundle_hash, entry.catalog_hash, "enforce", nonce).report_data()
    sim = SimulatedQuoteSigner().quote(rd, initdata.tdx_mrconfigid(toml))
    # a signed release for each guest, as every relying party is configured (the release check is
    # part of what is measured)
    releases = (release_of("tdx", quote), release_of("snp", snp), dev_release())
    allow_sim = AppraisalPolicy(allow_simulated=True, releases=releases)
    hardware = AppraisalPolicy(releases=releases)

    cases: dict[str, Callable[[], Verdict]] = {
        "tdx": lambda: appraise_evidence("tdx", quote, collateral=coll, now=tdx_now, policy=hardware),
        "tdx_collateral_json": lambda: appraise_evidence("tdx", quote, collateral=coll_json, now=tdx_now,
                                                         policy=hardware),
        "snp": lambda: appraise_evidence("snp", snp, now=snp_now, policy=hardware),
        "simulated_full": lambda: appraise_attestation(
            "simulated",
            sim,
            initdata=toml,
            public_key_jwk=public_jwk(key),
            bundle_hash=entry.bundle_hash,
            catalog_hash=entry.catalog_hash,
            enforcement_mode="enforce",
            nonce=nonce,
            policy=allow_sim,
        ),
    }
    results = {name: _time(fn, args.iterations) for name, fn in cases.items()}
    write_json(
        args.out,
        {
            "benchmark": "verify",
            "at": utc_now(),
            "machine": machine_description(),
            "iterations": args.iterations,
            "results": results,
        },
    )
    for name, r in results.items():
        print(f"{name:22s} p50 {r['p50']:8.3f} ms   p99 {r['p99']:8.3f} ms   (n={r['n']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
