"""Verify a whole audit store offline: every chain, each enclave's ledger, withheld and forked sessions.

Chains alone show deletion inside a chain, editing and forgery, but not a session whose rows were
deleted outright, nor a second chain under one id. The ledger (``ledger:<kid>``, one per enclave,
:func:`cmcp_core.audit.ledger_id`) closes that gap: it names every session the enclave opened, and
at close the session's tip and entry count. So, per enclave key:

* the ledger must verify as a chain; a session chain it does not name means ledger entries were
  withheld (``AUDIT_WITHHELD``);
* every session the ledger opened must be in the store (else ``AUDIT_WITHHELD``) and verify; a
  closed one must end exactly at the tip, with the count, its ledger close names
  (``AUDIT_TRUNCATED``);
* one session id under two enclave keys is ``AUDIT_FORK`` (ids are minted by one enclave);
* a ledger ``adopt`` (an enclave took a principal over from the trail a gateway handed it) that
  names fewer allowed calls than the store holds of that principal under the enclave's bundle and
  audience inside the window before the takeover is ``AUDIT_PRINCIPAL_WITHHELD``: the trail was
  cut to shed the principal's taint.

A cut ledger tail is only caught against a Trust Record's ledger reference
(:func:`cmcp_core.trust_record.record_ledger`) or the enclave's live counter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.audit import LEDGER_PREFIX, allowed_call, ledger_id, verify_chain
from cmcp_core.audit_store import AuditStore, ChainSummary
from cmcp_core.errors import Code


@dataclass(frozen=True)
class Finding:
    """The verdict on one chain (``code`` is ``None`` when it verifies)."""

    kid: str
    chain: str
    count: int
    tip: str
    code: Code | None = None
    message: str = ""
    state: str = ""  # open | closed | ledger

    @property
    def ok(self) -> bool:
        return self.code is None

    def to_json(self) -> dict[str, Any]:
        return {"kid": self.kid, "chain": self.chain, "ok": self.ok, "count": self.count, "tip": self.tip,
                "code": self.code.value if self.code else None, "message": self.message,
                "state": self.state}


def _entries(store: AuditStore, kid: str, chain: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in store.entries(kid, chain)]


def _ledger(entries: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, tuple[str, int]], list[str]]:
    """Sessions opened (id -> principal), closed (id -> (tip, entries)) and ids opened twice."""
    opened: dict[str, str] = {}
    closed: dict[str, tuple[str, int]] = {}
    twice: list[str] = []
    for entry in entries:
        data = entry.get("data") or {}
        session = str(data.get("session_id", ""))
        if entry.get("kind") == "open":
            if session in opened:
                twice.append(session)
            opened[session] = str(data.get("principal", ""))
        elif entry.get("kind") == "close":
            closed[session] = (str(data.get("tip", "")), int(data.get("entries", -1)))
    return opened, closed, twice


def verify_store(store: AuditStore, keys: Mapping[str, Ed25519PublicKey]) -> list[Finding]:
    """One finding per chain held (and per session the ledger names but the store lacks);
    ``keys`` maps an enclave key id to its public key."""
    chains = store.chains()
    by_kid: dict[str, list[str]] = {}
    kids_of: dict[str, set[str]] = {}
    for summary in chains:
        by_kid.setdefault(summary.kid, []).append(summary.chain)
        if not summary.chain.startswith(LEDGER_PREFIX):
            kids_of.setdefault(summary.chain, set()).add(summary.kid)
    findings: list[Finding] = []
    for kid, names in sorted(by_kid.items()):
        key = keys.get(kid)
        if key is None:
            findings.extend(Finding(kid, name, 0, "", Code.AUDIT_BAD_SIGNATURE,
                                    "no public key given for this enclave (--key)") for name in names)
            continue
        findings.extend(_verify_enclave(store, kid, key, names, kids_of))
    findings.extend(_verify_takeovers(store, chains, keys))
    return findings


def _verify_takeovers(store: AuditStore, chains: list[ChainSummary],
                      keys: Mapping[str, Ed25519PublicKey]) -> list[Finding]:
    """Each ``adopt`` in a verified ledger against the principal's allowed decisions the store holds."""
    adopts = [(summary.kid, entry) for summary in chains if summary.chain == ledger_id(summary.kid)
              and summary.kid in keys
              for entry in _entries(store, summary.kid, summary.chain) if entry.get("kind") == "adopt"]
    if not adopts:
        return []
    principals = {str(entry["data"].get("principal", "")) for _, entry in adopts}
    allowed: dict[str, list[dict[str, Any]]] = {}  # principal -> its allowed calls held
    for summary in chains:
        if summary.principal in principals and not summary.chain.startswith(LEDGER_PREFIX):
            allowed.setdefault(summary.principal, []).extend(
                e for e in _entries(store, summary.kid, summary.chain)
                if allowed_call(e) and e["data"].get("principal") == summary.principal)
    findings = []
    for kid, entry in adopts:
        data, at = entry["data"], int(entry.get("ts", 0))
        principal = str(data.get("principal", ""))
        start = at - int(data.get("window_ms", 0))
        route = (data.get("bundle_hash"), data.get("audience"))  # the trail is this route's only
        held = sum(1 for call in allowed.get(principal, ()) if start <= int(call.get("ts", 0)) < at
                   and (call["data"].get("bundle_hash"), call["data"].get("audience")) == route)
        if held > int(data.get("entries", 0)):
            message = (f"took {principal!r} over from {data.get('entries')} allowed decisions; the store "
                       f"holds {held} inside the window before the takeover")
            findings.append(Finding(kid, ledger_id(kid), 0, str(entry.get("hash", "")),
                                    Code.AUDIT_PRINCIPAL_WITHHELD, message, "ledger"))
    return findings


def _verify_enclave(store: AuditStore, kid: str, key: Ed25519PublicKey, names: list[str],
                    kids_of: Mapping[str, set[str]]) -> list[Finding]:
    findings: list[Finding] = []
    ledger = ledger_id(kid)
    sessions = sorted(n for n in names if n != ledger)
    ledger_entries = _entries(store, kid, ledger) if ledger in names else []
    checked = verify_chain(ledger_entries, key)
    if ledger not in names:
        findings.append(Finding(kid, ledger, 0, "", Code.AUDIT_WITHHELD,
                                "the store holds no ledger for this enclave", "ledger"))
    elif not checked.ok:
        findings.append(Finding(kid, ledger, checked.count, checked.tip, checked.code,
                                f"at entry {checked.index}: {checked.message}", "ledger"))
    else:
        findings.append(Finding(kid, ledger, checked.count, checked.tip, state="ledger"))
    opened, closed, twice = _ledger(ledger_entries if checked.ok else [])
    for session in twice:
        findings.append(Finding(kid, session, 0, "", Code.AUDIT_FORK, "the ledger opens this id twice"))
    for session in sorted(set(opened) - set(sessions)):
        findings.append(Finding(kid, session, 0, "", Code.AUDIT_WITHHELD,
                                "the ledger opened this session but the store holds none of it"))
    for session in sessions:
        findings.append(_verify_session(store, kid, key, session, opened, closed, kids_of, checked.ok))
    return findings


def _verify_session(store: AuditStore, kid: str, key: Ed25519PublicKey, session: str,
                    opened: Mapping[str, str], closed: Mapping[str, tuple[str, int]],
                    kids_of: Mapping[str, set[str]], ledger_ok: bool) -> Finding:
    state = "closed" if session in closed else "open"
    if len(kids_of.get(session, ())) > 1:
        return Finding(kid, session, 0, "", Code.AUDIT_FORK,
                       f"chains from {len(kids_of[session])} enclaves carry this session id", state)
    tip, count = closed.get(session, (None, -1))
    result = verify_chain(_entries(store, kid, session), key, expected_tip=tip)
    if not result.ok:
        return Finding(kid, session, result.count, result.tip, result.code,
                       f"at entry {result.index}: {result.message}", state)
    if session in closed and result.count != count:
        return Finding(kid, session, result.count, result.tip, Code.AUDIT_TRUNCATED,
                       f"the ledger closed it after {count} entries, the store holds {result.count}", state)
    if ledger_ok and session not in opened:
        return Finding(kid, session, result.count, result.tip, Code.AUDIT_WITHHELD,
                       "the ledger does not name this session: ledger entries are missing", state)
    return Finding(kid, session, result.count, result.tip, state=state)
