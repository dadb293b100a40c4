"""``python -m bench run [--quick]`` — benchmarks side by side with the origin (issue 9).

Subcommands:

``run [--quick] [--docs/--no-docs] [--out DIR]``
    Measure everything and write ``bench/results/<mode>.json``.  A full run
    regenerates ``docs/benchmarks.md`` and ``docs/img/bench-*.png``; a quick run
    (CI smoke, < 2 minutes) writes ``bench/results/quick.md`` and its plots
    under ``bench/results/plots-quick/`` instead.
``report [--results FILE] [--docs/--no-docs]``
    Re-render Markdown and plots from a result file without measuring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, read_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="measure and report")
    p_run.add_argument("--quick", action="store_true", help="CI smoke: fewer samples, small figures, < 2 min")
    p_run.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                       help="write docs/benchmarks.md (default: full runs only)")
    p_run.add_argument("--out", type=Path, default=RESULTS_DIR, help="result directory")
    p_run.add_argument("--only", help="comma list of sections: latency,throughput,streamed,profile,enclave,"
                                      "components,memory,operator (writes <mode>-only-<sections>.json, "
                                      "never docs/)")
    p_run.add_argument("--origin-state", choices=("disk", "tmpfs", "both"), default=None,
                       help="where the origin keeps its SQLite audit DB: disk (as shipped; it commits per "
                            "call, so fsync latency shows), tmpfs (/dev/shm: compute only), or both as two "
                            "paths (default: both for full runs, disk for --quick)")
    p_rep = sub.add_parser("report", help="re-render from a result file")
    p_rep.add_argument("--results", type=Path, default=RESULTS_DIR / "full.json")
    p_rep.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)

    if args.cmd == "run":
        # Only ``run`` needs the harness (it loads every component and the load generator);
        # ``report`` must start without it.
        from bench import harness

        plan = harness.QUICK if args.quick else harness.FULL
        only = None
        if args.only:
            only = frozenset(s.strip() for s in args.only.split(",") if s.strip())
            unknown = only - set(harness.SECTION_NAMES)
            if unknown:
                parser.error(f"unknown sections {sorted(unknown)}; choose from {harness.SECTION_NAMES}")
        res = harness.run(plan, out_dir=args.out, write_docs=args.docs, only=only,
                          origin_state=args.origin_state or ("disk" if args.quick else "both"))
        failed = [k for k, v in res["sections"].items() if v["status"] == "failed"]
        # Exit non-zero only when the harness itself is broken (the upstream or the latency
        # section failed): numbers are never judged here.
        return 1 if any(k in failed for k in ("setup:upstream", "sequential")) else 0
    if args.cmd == "report":
        from bench import report  # only ``report`` needs it (see above)

        res = read_json(args.results)
        docs = (res.get("mode") == "full") if args.docs is None else args.docs
        print(report.write(res, docs=docs, stem=args.results.stem))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
