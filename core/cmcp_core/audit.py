"""The per-session audit chain: signed entries hash-chained from ``"genesis"``.

Entry (JSON, JCS on the wire)::

    {"v": 1, "session_id": ..., "seq": 0, "ts": <unix ms>, "kind": "open|decision|complete|
     reset|close", "data": {...}, "prev": "genesis" | <hash of entry seq-1>, "kid": <thumbprint>,
     "sig": <b64url Ed25519>, "hash": "sha256:" + hex(SHA-256(JCS(entry minus hash)))}

Signatures: a ``decision`` entry's ``data`` *is* the signed decision document (it carries
``session_id``, ``seq``, ``prev``, ``kid`` and ``ts``, which must equal the entry's), and ``sig`` is
that decision's signature (``DECISION_CONTEXT``); the gateway and the auditor check the very same
signature, and the enclave signs once per decision. Every other entry is signed with
``AUDIT_CONTEXT`` over JCS(entry minus ``hash`` and ``sig``). The hash covers the signature, so
the chain tip commits to every signature. Storage outside the enclave is untrusted: a verifier
holding the enclave key detects deletion (seq gap / broken link), reordering, editing and forged
entries; truncation of the tail is caught against the tip the Trust Record names
(``expected_tip``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cmcp_core.crypto import AUDIT_CONTEXT, DECISION_CONTEXT, sign, thumbprint, verify_payload
from cmcp_core.digest import b64url, b64url_decode, canonical, jcs, tagged_sha256
from cmcp_core.errors import Code
from cmcp_core.mcp_target import STATEFUL_METHODS

GENESIS = "genesis"
ENTRY_VERSION = 1
LEDGER_PREFIX = "ledger:"  # the chain id of an enclave's ledger of session opens and closes
KINDS = ("open", "decision", "complete", "reset", "close", "adopt")
_FIELDS = frozenset({"v", "session_id", "seq", "ts", "kind", "data", "prev", "kid", "sig", "hash"})


def ledger_id(kid: str) -> str:
    """The chain id of the ledger of the enclave with key id ``kid``: its own chain, ``open`` and
    ``close`` entries naming each session it opened and closed (a close names the session's tip
    and entry count), so a verifier finds a session the store withholds or holds twice."""
    return LEDGER_PREFIX + kid


def entry_hash(entry: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the JCS form of the entry minus its ``hash`` member."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return tagged_sha256(canonical(body))


def _signed_part(entry: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in entry.items() if k not in ("hash", "sig")})


def make_entry(key: Ed25519PrivateKey, *, session_id: str, seq: int, prev: str, kind: str,
               data: dict[str, Any], kid: str | None = None, ts_ms: int | None = None) -> dict[str, Any]:
    """Build, sign and hash one entry. ``kid`` may be passed to skip recomputing it."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit entry kind {kind!r}")
    entry: dict[str, Any] = {
        "v": ENTRY_VERSION, "session_id": session_id, "seq": seq,
        "ts": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "kind": kind, "data": data, "prev": prev,
        "kid": kid if kid is not None else thumbprint(key.public_key()),
    }
    entry["sig"] = b64url(sign(key, AUDIT_CONTEXT + _signed_part(entry)))
    entry["hash"] = entry_hash(entry)
    return entry


# The fields a decision document shares with the entry that records it.
DECISION_BOUND = ("session_id", "seq", "prev", "kid", "ts")


def decision_entry(decision_json: bytes, signature: bytes,
                   document: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The entry recording an already-signed decision, and its canonical bytes (with hash).

    ``decision_json`` must be the canonical form of ``document``. ``data`` is the first key in
    JCS order, so the entry's canonical bytes are assembled around the decision bytes instead of
    re-serialising them (the hot path); :func:`verify_chain` recomputes them independently.
    """
    rest = {"kid": document["kid"], "kind": "decision", "prev": document["prev"],
            "seq": document["seq"], "session_id": document["session_id"], "sig": b64url(signature),
            "ts": document["ts"], "v": ENTRY_VERSION}
    tail = canonical(rest)[1:]  # without the opening brace
    digest = tagged_sha256(b'{"data":' + decision_json + b"," + tail)
    raw = b'{"data":' + decision_json + b',"hash":"' + digest.encode("ascii") + b'",' + tail
    return {**rest, "data": dict(document), "hash": digest}, raw


def entry_bytes(entry: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a full entry (what every enclave answer carries in ``audit_entries``)."""
    return canonical(dict(entry))


def _signature_ok(entry: Mapping[str, Any], public_key: Ed25519PublicKey, sig: bytes) -> bool:
    if entry["kind"] != "decision":
        return verify_payload(public_key, AUDIT_CONTEXT, _signed_part(entry), sig)
    data = entry["data"]
    if any(data.get(name) != entry[name] for name in DECISION_BOUND):
        return False  # entry fields the decision signature does not vouch for
    return verify_payload(public_key, DECISION_CONTEXT, jcs(dict(data)), sig)


def allowed_call(entry: Mapping[str, Any]) -> bool:
    """An allowed decision of a :data:`~cmcp_core.mcp_target.STATEFUL_METHODS` request (a tool
    call, a resource read, a prompt): what a principal's state (taint, budgets) is made of, and
    so what a takeover replays and an auditor counts."""
    data = entry.get("data")
    return entry.get("kind") == "decision" and isinstance(data, Mapping) \
        and data.get("effective") == "allow" and data.get("method") in STATEFUL_METHODS


def verify_entry(entry: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """One entry on its own: well-formed, unedited, signed by ``public_key`` (its place in a
    chain is not checked: a principal's trail crosses sessions and enclaves)."""
    if not isinstance(entry, Mapping) or set(entry) != _FIELDS or entry["kind"] not in KINDS \
            or not isinstance(entry["data"], Mapping) or not isinstance(entry["sig"], str):
        return False
    try:
        sig = b64url_decode(entry["sig"])
    except ValueError:
        return False
    return entry_hash(entry) == entry["hash"] and entry["kid"] == thumbprint(public_key) \
        and _signature_ok(entry, public_key, sig)


@dataclass(frozen=True)
class ChainResult:
    """Outcome of :func:`verify_chain`. ``code`` is ``None`` when the chain verifies."""

    ok: bool
    count: int
    tip: str
    code: Code | None = None
    index: int | None = None  # position in the list of the first bad entry
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "count": self.count, "tip": self.tip,
                "code": self.code.value if self.code else None, "index": self.index,
                "message": self.message}


def _fail(code: Code, index: int, message: str, count: int, tip: str) -> ChainResult:
    return ChainResult(ok=False, count=count, tip=tip, code=code, index=index, message=message)


def verify_chain(entries: Iterable[Mapping[str, Any]], public_key: Ed25519PublicKey, *,
                 start_prev: str = GENESIS, start_seq: int = 0,
                 expected_tip: str | None = None) -> ChainResult:
    """Check one session's entries in order. Fails closed on the first problem.

    ``start_prev`` / ``start_seq`` let a verifier check an export that begins mid-chain;
    ``expected_tip`` (e.g. a Trust Record's ``tool_transcript.hash``) catches a cut-off tail.
    """
    kid = thumbprint(public_key)
    prev, seq, count, session = start_prev, start_seq, 0, None
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != _FIELDS:
            return _fail(Code.AUDIT_MALFORMED, index, "entry does not have exactly the entry fields",
                         count, prev)
        if entry["v"] != ENTRY_VERSION or entry["kind"] not in KINDS \
                or not isinstance(entry["seq"], int) or isinstance(entry["seq"], bool) \
                or not isinstance(entry["sig"], str) or not isinstance(entry["hash"], str) \
                or not isinstance(entry["data"], Mapping):
            return _fail(Code.AUDIT_MALFORMED, index, "entry field has the wrong type", count, prev)
        if session is None:
            session = entry["session_id"]
        elif entry["session_id"] != session:
            return _fail(Code.AUDIT_CHAIN_BROKEN, index, "entry belongs to another session", count, prev)
        if entry["seq"] != seq:
            return _fail(Code.AUDIT_SEQ_GAP, index, f"expected seq {seq}, found {entry['seq']}",
                         count, prev)
        if entry["prev"] != prev:
            return _fail(Code.AUDIT_CHAIN_BROKEN, index, f"seq {seq} does not link to {prev}",
                         count, prev)
        if entry_hash(entry) != entry["hash"]:
            return _fail(Code.AUDIT_ENTRY_EDITED, index, f"seq {seq} hash does not match its content",
                         count, prev)
        try:
            sig = b64url_decode(entry["sig"])
        except ValueError:
            return _fail(Code.AUDIT_MALFORMED, index, f"seq {seq} signature is not base64url", count, prev)
        if entry["kid"] != kid or not _signature_ok(entry, public_key, sig):
            return _fail(Code.AUDIT_BAD_SIGNATURE, index, f"seq {seq} is not signed by the enclave key",
                         count, prev)
        prev, seq, count = entry["hash"], seq + 1, count + 1
    if expected_tip is not None and prev != expected_tip:
        return _fail(Code.AUDIT_TRUNCATED, count, f"chain ends at {prev}, expected {expected_tip}",
                     count, prev)
    return ChainResult(ok=True, count=count, tip=prev)


RESET_CONTEXT = b"cmcp-session-reset-v1\x00"


def reset_payload(*, session_id: str, actor: str, reason: str, seq: int) -> bytes:
    """Bytes an operator key signs to reset a session: bound to the session's next seq, so a
    captured reset cannot be replayed once the chain has moved on."""
    return RESET_CONTEXT + jcs({"session_id": session_id, "actor": actor, "reason": reason, "seq": seq})
