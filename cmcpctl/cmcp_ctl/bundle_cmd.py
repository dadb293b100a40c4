"""``cmcpctl bundle hash|validate|trust-issuer DIR``: the same hash and validation the enclave
applies at load, and the ``identity`` section that makes the enclave verify agents' tokens.

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

import httpx

from cmcp_core.bundle import MANIFEST_FILE, BundleError, load_bundle, verify_signature
from cmcp_core.crypto import key_from_jwk
from cmcp_core.identity import DEFAULT_ALGORITHMS, IdentityConfigError, IdentityPolicy, jwk_thumbprint
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
    trust_p = sub.add_parser(
        "trust-issuer", help="Make the bundle trust an OAuth / OIDC token issuer (manifest identity)",
        description="Add (or replace) an issuer in the manifest's identity section, with its keys\n"
                    "inline or pinned by thumbprint, and the resource URIs tokens must be issued for.\n"
                    "The enclave then verifies every agent's access token against it (docs/identity.md).",
        epilog="examples:\n"
               "  # a cluster's ServiceAccount issuer\n"
               "  kubectl get --raw /openid/v1/jwks > jwks.json\n"
               "  cmcpctl bundle trust-issuer ./bundle --jwks jwks.json \\\n"
               "      --issuer https://kubernetes.default.svc.cluster.local \\\n"
               "      --audience https://gw.example/mcp/payments\n"
               "  # any OIDC issuer, keys fetched from its discovery document\n"
               "  cmcpctl bundle trust-issuer ./bundle --issuer https://login.example --discover \\\n"
               "      --audience https://gw.example/mcp/payments --principal-prefix corp:",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    trust_p.add_argument("dir", metavar="DIR", help="the bundle directory (its manifest.json is rewritten)")
    trust_p.add_argument("--issuer", required=True, help="the tokens' iss value")
    keys = trust_p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", metavar="FILE", help="the issuer's JWK Set, as a file")
    keys.add_argument("--discover", action="store_true",
                      help="fetch the JWK Set through <issuer>/.well-known/openid-configuration")
    trust_p.add_argument("--audience", action="append", required=True, metavar="URI",
                         help="a resource URI (RFC 8707) tokens must be issued for; repeatable")
    trust_p.add_argument("--pin", action="store_true",
                         help="pin the keys by RFC 7638 thumbprint instead of inlining them (the enclave "
                              "then needs them with --issuer-jwks)")
    trust_p.add_argument("--algorithm", action="append", metavar="ALG",
                         help="an algorithm the issuer signs with (default RS256, ES256, EdDSA)")
    trust_p.add_argument("--principal-prefix", default="", help="prefixed to the subject (several issuers)")
    trust_p.set_defaults(func=_trust_issuer)
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


def _trust_issuer(args: argparse.Namespace) -> int:
    manifest_path = Path(args.dir) / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        jwks = _discovered_jwks(args.issuer) if args.discover else json.loads(Path(args.jwks).read_text())
        entry = {"issuer": args.issuer, "algorithms": args.algorithm or list(DEFAULT_ALGORITHMS)}
        keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
        entry |= ({"key_thumbprints": sorted(jwk_thumbprint(k) for k in keys)} if args.pin
                  else {"jwks": {"keys": keys}})
        if args.principal_prefix:
            entry["principal_prefix"] = args.principal_prefix
        section = dict(manifest.get("identity") or {})
        section["audiences"] = sorted({*section.get("audiences", []), *args.audience})
        others = [i for i in section.get("issuers", []) if i.get("issuer") != args.issuer]
        section["issuers"] = [*others, entry]
        updated = {**manifest, "identity": section}
        IdentityPolicy.from_manifest(updated)  # refuse to write what the enclave would refuse
    except (OSError, ValueError, httpx.HTTPError, IdentityConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest_path.write_text(json.dumps(updated, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.issuer}: {len(keys)} key(s) {'pinned' if args.pin else 'inline'}; "
          f"bundle_hash {load_bundle(args.dir).bundle_hash}")
    return 0


def _discovered_jwks(issuer: str) -> dict[str, Any]:
    """The issuer's JWK Set through OIDC discovery; the document must name the same issuer."""
    config = httpx.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10.0)
    config.raise_for_status()
    document = config.json()
    if document.get("issuer") != issuer or not isinstance(document.get("jwks_uri"), str):
        raise ValueError(f"{issuer}: the discovery document names issuer {document.get('issuer')!r} "
                         "or has no jwks_uri")
    keys = httpx.get(document["jwks_uri"], timeout=10.0)
    keys.raise_for_status()
    found: dict[str, Any] = keys.json()
    return found


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
