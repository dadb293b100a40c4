"""``python -m cmcp_devkit.mcp_conformance [run --url URL --spec-version V [--scenario S]]``.

Without arguments: install the suite (once) and print ``node=``, ``cli=`` and ``root=`` lines.
``run``: run it against an MCP endpoint and print the per-scenario table (exit 1 on a failure).
"""

from __future__ import annotations

import argparse
import sys

from cmcp_devkit.mcp_conformance import SPEC_VERSIONS, ConformanceError, ensure_installed, run_suite_blocking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmcp_devkit.mcp_conformance", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the server scenarios against an MCP endpoint")
    run.add_argument("--url", required=True)
    run.add_argument("--spec-version", choices=SPEC_VERSIONS, action="append")
    run.add_argument("--scenario")
    args = parser.parse_args(argv)
    try:
        install = ensure_installed()
        if args.command != "run":
            for key, value in install.as_dict().items():
                print(f"{key}={value}")
            return 0
        failed = False
        for version in args.spec_version or SPEC_VERSIONS:
            result = run_suite_blocking(args.url, version, scenario=args.scenario, install=install)
            print(result.table())
            failed = failed or bool(result.failed)
        return 1 if failed else 0
    except ConformanceError as exc:
        print(f"mcp-conformance: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
