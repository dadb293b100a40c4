"""``cmcpctl audit list|export|verify``: read the audit trail from the store, or check an export.

* ``list --store SPEC``: every chain the store holds (sessions with their principal, and each
  enclave's ledger).
* ``export SESSION --store SPEC``: one chain as JSON lines (what ``verify FILE`` reads).
* ``verify --store SPEC --key JWK...``: every chain and every enclave's ledger straight from the
  store; reports a session the ledger opened but the store lacks (``AUDIT_WITHHELD``), a chain cut
  short of its ledger close (``AUDIT_TRUNCATED``), one id under two enclaves (``AUDIT_FORK``) and
  a principal taken over from a trail shorter than the store (``AUDIT_PRINCIPAL_WITHHELD``).
* ``verify FILE --key JWK``: an export offline; FILE holds entries as JSON lines (``-`` reads
  stdin) or one JSON array; entries of several sessions are split by ``session_id``.

Exit 0 when everything verifies, 1 otherwise (the report names the stable error code), 2 on a
usage error or a store that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.audit import GENESIS, verify_chain
from cmcp_core.audit_store import AuditStore, chain_entries, open_audit_store
from cmcp_core.audit_store_verify import verify_store
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.errors import CmcpError
from cmcp_ctl.usage import UsageError, exit_2_on_usage_error

STORE_HELP = "the gateway's audit store: sqlite:PATH or postgresql://..."


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="List, export and verify audit chains")
    sub = parser.add_subparsers(dest="audit_command", metavar="<subcommand>")
    listing = sub.add_parser("list", help="Chains in the audit store: sessions, principals, ledgers")
    listing.add_argument("--store", required=True, help=STORE_HELP)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=exit_2_on_usage_error("audit", _list))
    export = sub.add_parser(
        "export", help="One chain from the audit store as JSON lines",
        epilog="A session id can begin with '-' (its first characters are the enclave's base64url "
               "key id): put '--' before it, e.g. cmcpctl audit export --store SPEC -- -AbC.xyz")
    export.add_argument("session", help="session id (or ledger:<kid>); after '--' when it begins with '-'")
    export.add_argument("--store", required=True, help=STORE_HELP)
    export.add_argument("--out", help="file to write (default stdout)")
    export.set_defaults(func=exit_2_on_usage_error("audit", _export))
    verify = sub.add_parser("verify", help="Verify chains, ledgers and completeness (store or export)")
    verify.add_argument("file", nargs="?", help="JSON lines or JSON array of entries; '-' for stdin")
    verify.add_argument("--store", help=STORE_HELP + " (instead of FILE)")
    verify.add_argument("--key", required=True, action="append",
                        help="enclave public JWK, as JSON or a file path (repeat: one per enclave)")
    verify.add_argument("--expected-tip",
                        help="chain tip the Trust Record names (detects a cut tail); one session per export")
    verify.add_argument("--from-seq", type=int, default=0,
                        help="first seq of a partial export; its first entry's prev is then trusted")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=exit_2_on_usage_error("audit", _verify))
    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), 2)[1])


def _open(spec: str) -> AuditStore:
    try:
        return open_audit_store(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except CmcpError as exc:
        raise UsageError(f"{exc.code.value}: {exc.detail}") from exc


def _list(args: argparse.Namespace) -> int:
    store = _open(args.store)
    try:
        chains = store.chains()
    except CmcpError as exc:
        raise UsageError(f"{exc.code.value}: {exc.detail}") from exc
    finally:
        store.close()
    if args.json:
        rows = [{"kid": c.kid, "chain": c.chain, "entries": c.entries, "principal": c.principal,
                 "first_ts": c.first_ts, "last_ts": c.last_ts} for c in chains]
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for c in chains:
        print(f"{c.chain}\tkid={c.kid}\tentries={c.entries}\tprincipal={c.principal or '-'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _open(args.store)
    try:
        entries = chain_entries(store, args.session)
    except CmcpError as exc:
        raise UsageError(f"{exc.code.value}: {exc.detail}") from exc
    finally:
        store.close()
    if not entries:
        raise UsageError(f"the store holds no chain {args.session!r}")
    text = "".join(raw.decode("utf-8") + "\n" for raw in entries)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _keys(values: list[str]) -> list[Ed25519PublicKey]:
    try:
        return [key_from_jwk(json.loads(v if v.lstrip().startswith("{") else Path(v).read_text()))
                for v in values]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--key: {exc}") from exc


def _load_entries(source: str) -> list[Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        stripped = text.strip()
        if stripped.startswith("["):
            doc = json.loads(stripped)
            return list(doc) if isinstance(doc, list) else [doc]
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def _verify(args: argparse.Namespace) -> int:
    keys = _keys(args.key)
    if (args.store is None) == (args.file is None):
        raise UsageError("give either FILE or --store")
    if args.store is not None:
        return _verify_store(args, keys)
    if len(keys) != 1:
        raise UsageError("verifying a FILE takes exactly one --key")
    entries = _load_entries(args.file)
    sessions: dict[str, list[Any]] = {}
    for entry in entries:
        sid = entry.get("session_id") if isinstance(entry, dict) else None
        sessions.setdefault(str(sid), []).append(entry)
    if args.expected_tip and len(sessions) != 1:
        # a tip names one session's chain: checking none of them would let a cut tail pass
        raise UsageError(f"--expected-tip needs an export of one session; this one holds {len(sessions)}")
    results = {}
    for sid, chain in sessions.items():
        start_prev = GENESIS
        if args.from_seq and chain and isinstance(chain[0], dict):
            start_prev = str(chain[0].get("prev"))
        results[sid] = verify_chain(chain, keys[0], start_prev=start_prev, start_seq=args.from_seq,
                                    expected_tip=args.expected_tip)
    ok = bool(results) and all(r.ok for r in results.values())
    if args.json:
        print(json.dumps({"ok": ok, "sessions": {s: r.to_json() for s, r in results.items()}},
                         ensure_ascii=False))
    else:
        for sid, r in results.items():
            if r.ok:
                print(f"ok {sid}: {r.count} entries, tip {r.tip}")
            else:
                print(f"FAILED {sid}: {r.code} at entry {r.index}: {r.message}", file=sys.stderr)
    return 0 if ok else 1


def _verify_store(args: argparse.Namespace, keys: list[Ed25519PublicKey]) -> int:
    if args.expected_tip or args.from_seq:
        raise UsageError("--expected-tip and --from-seq apply to a FILE; a store is checked by its ledgers")
    store = _open(args.store)
    try:
        findings = verify_store(store, {thumbprint(k): k for k in keys})
    except CmcpError as exc:
        raise UsageError(f"{exc.code.value}: {exc.detail}") from exc
    finally:
        store.close()
    ok = bool(findings) and all(f.ok for f in findings)
    if args.json:
        print(json.dumps({"ok": ok, "chains": [f.to_json() for f in findings]}, ensure_ascii=False))
    else:
        for f in findings:
            if f.ok:
                print(f"ok {f.chain}: {f.count} entries, tip {f.tip} ({f.state})")
            else:
                print(f"FAILED {f.chain}: {f.code} {f.message}", file=sys.stderr)
        if not findings:
            print("FAILED: the store holds no audit chain", file=sys.stderr)
    return 0 if ok else 1
