"""``cmcpctl audit verify FILE --key JWK``: check an exported audit chain offline.

FILE holds entries as JSON lines (``-`` reads stdin) or one JSON array; entries of several
sessions are split by ``session_id`` and each chain is verified on its own. Exit 0 when every
chain verifies, 1 otherwise (the report names the stable error code and the entry).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cmcp_core.audit import GENESIS, verify_chain
from cmcp_core.crypto import key_from_jwk


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="Verify exported audit chains offline")
    sub = parser.add_subparsers(dest="audit_command", metavar="<subcommand>")
    verify = sub.add_parser("verify", help="Verify hash chain and signatures of an audit export")
    verify.add_argument("file", help="JSON lines or JSON array of entries; '-' for stdin")
    verify.add_argument("--key", required=True, help="enclave public JWK, as JSON or a file path")
    verify.add_argument("--expected-tip",
                        help="chain tip the Trust Record names (detects a cut tail); one session per export")
    verify.add_argument("--from-seq", type=int, default=0,
                        help="first seq of a partial export; its first entry's prev is then trusted")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=_verify)
    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), 2)[1])


def _load_entries(source: str) -> list[Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    stripped = text.strip()
    if stripped.startswith("["):
        doc = json.loads(stripped)
        return list(doc) if isinstance(doc, list) else [doc]
    return [json.loads(line) for line in stripped.splitlines() if line.strip()]


def _verify(args: argparse.Namespace) -> int:
    try:
        key_text = args.key if args.key.lstrip().startswith("{") else Path(args.key).read_text()
        key = key_from_jwk(json.loads(key_text))
        entries = _load_entries(args.file)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sessions: dict[str, list[Any]] = {}
    for entry in entries:
        sid = entry.get("session_id") if isinstance(entry, dict) else None
        sessions.setdefault(str(sid), []).append(entry)
    if args.expected_tip and len(sessions) != 1:
        # a tip names one session's chain: checking none of them would let a cut tail pass
        print(f"error: --expected-tip needs an export of one session; this one holds {len(sessions)}",
              file=sys.stderr)
        return 2
    results = {}
    for sid, chain in sessions.items():
        start_prev = GENESIS
        if args.from_seq and chain and isinstance(chain[0], dict):
            start_prev = str(chain[0].get("prev"))
        results[sid] = verify_chain(chain, key, start_prev=start_prev, start_seq=args.from_seq,
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
