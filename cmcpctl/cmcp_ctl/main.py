"""Entry point of ``cmcpctl``. Each command group lives in its own module with ``register()``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Command groups, in the order ``--help`` lists them. Each module defines
# ``register(subparsers: argparse._SubParsersAction) -> None`` and sets ``func`` on its parsers;
# ``func(args) -> int`` returns the exit code (0 ok, 1 failed check, 2 usage).
COMMAND_MODULES: tuple[str, ...] = (
    "cmcp_ctl.bundle_cmd",
    "cmcp_ctl.audit_cmd",
    "cmcp_ctl.conformance_cmd",
    "cmcp_ctl.verify_cmd",
    "cmcp_ctl.release_cmd",
    "cmcp_ctl.demo_cmd",
    "cmcp_ctl.dev_cmd",
)

DESCRIPTION = """cmcpctl controls and verifies cMCP for Kubernetes.

Policy commands:
  bundle       Hash and validate policy bundles

Verification commands:
  verify       Appraise attestation evidence, Trust Records and audit chains
  audit        Verify exported audit chains offline
  release      Sign and verify enclave release manifests

Deployment commands:
  demo         Run the end-to-end demo (local processes, or --cluster)
  conformance  Run the conformance suite against a deployment

Development commands:
  dev          Run cMCP locally against your own MCP server (dev up)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmcpctl", description=DESCRIPTION, usage="cmcpctl [-h] <command> [flags]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Use \"cmcpctl <command> --help\" for more information about a given command.",
    )
    # the command list is DESCRIPTION's, grouped as kubectl does; argparse's own list is hidden
    # prog: a group's usage line reads "cmcpctl audit ...", not the root's custom usage + "audit"
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", help=argparse.SUPPRESS,
                                       prog="cmcpctl")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
