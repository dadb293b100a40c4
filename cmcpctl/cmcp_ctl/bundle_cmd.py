"""``cmcpctl bundle hash|validate DIR``: the same hash and validation the enclave applies at load.

``validate`` also warns about policies that are valid but easy to walk around (``like`` patterns
starting with ``*`` over arguments, :mod:`cmcp_core.policy_lint`). A warning never blocks the
enclave, so by default it goes to stderr and the exit code stays 0; ``--strict`` (for CI) makes
any warning fail the command like an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cmcp_core.bundle import BundleError, load_bundle, verify_signature
from cmcp_core.crypto import key_from_jwk
from cmcp_core.policy_lint import lint_bundle
from cmcp_core.validation import validate_bundle


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bundle", help="Hash and validate policy bundles")
    sub = parser.add_subparsers(dest="bundle_command", metavar="<subcommand>")
    hash_p = sub.add_parser("hash", help="Print sha256:<hex> bundle_hash of a bundle directory")
    hash_p.add_argument("dir")
    hash_p.add_argument("--catalog", action="store_true", help="also print catalog_hash")
    hash_p.set_defaults(func=_hash)
    val_p = sub.add_parser("validate", help="Validate every policy against the schema")
    val_p.add_argument("dir")
    val_p.add_argument("--json", action="store_true", help="machine-readable output")
    val_p.add_argument("--strict", action="store_true",
                       help="treat warnings (e.g. `like \"*...\"` over arguments) as errors: exit 1")
    val_p.add_argument("--signer-key", action="append", default=[],
                       help="trusted signer JWK (JSON or file); the manifest signature must verify")
    val_p.set_defaults(func=_validate)
    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), 2)[1])


def _hash(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.dir)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(bundle.bundle_hash)
    if args.catalog:
        print(bundle.catalog_hash)
    return 0


def _validate(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.dir)
    except BundleError as exc:
        issue = {"file": exc.file or "", "policy_id": "", "message": exc.message}
        _report([issue], args.json)
        return 1
    issues = [i.to_json() for i in validate_bundle(bundle)]
    if args.signer_key:
        try:
            keys = [key_from_jwk(json.loads(k if k.lstrip().startswith("{") else Path(k).read_text()))
                    for k in args.signer_key]
        except (OSError, ValueError) as exc:
            print(f"error: bad --signer-key: {exc}", file=sys.stderr)
            return 2
        if not verify_signature(bundle, keys):
            issues.append({"file": "manifest.json", "policy_id": "",
                           "message": "signature missing or not by a trusted signer"})
    warnings = [w.to_json() for w in lint_bundle(bundle)]
    failed = bool(issues) or (args.strict and bool(warnings))
    _report(issues, args.json, bundle.bundle_hash, warnings, valid=not failed)
    return 1 if failed else 0


def _report(issues: list[dict[str, str]], as_json: bool, bundle_hash: str | None = None,
            warnings: list[dict[str, str]] | None = None, *, valid: bool | None = None) -> None:
    warnings = warnings or []
    valid = not issues if valid is None else valid
    if as_json:
        print(json.dumps({"valid": valid, "bundle_hash": bundle_hash, "errors": issues,
                          "warnings": warnings}, ensure_ascii=False))
        return
    for issue in issues:
        print(f"{_where(issue)}: {issue['message']}", file=sys.stderr)
    for warning in warnings:
        print(f"warning: {_where(warning)}: {warning['message']}", file=sys.stderr)
    if valid:
        print(f"valid {bundle_hash}")


def _where(issue: dict[str, str]) -> str:
    where = issue["file"] or "<bundle>"
    if issue["policy_id"]:
        where += f" [{issue['policy_id']}]"
    return where
