"""Whole-store verification: each chain, the ledger, withheld sessions and ledgers, missing keys.

The command around it, with the attacker's deletions and forks, is tested in
tests/unit/cmcp_ctl/test_audit_cmd.py."""

from __future__ import annotations

from pathlib import Path

from cmcp_core.audit_store import AuditStore, open_audit_store, rows_of
from cmcp_core.audit_store_verify import verify_store
from cmcp_core.errors import Code
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide, known
from tests.paths import EXAMPLES


def _trail(tmp_path: Path, *, drop_ledger: bool = False) -> tuple[Enclave, AuditStore]:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "enc")
    decide(enc, "web.search", {"query": "a"}, session="a")
    decide(enc, "web.search", {"query": "b"}, session="b")
    enc.close(known(enc, "a"))
    store = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    while len(enc.outbox):
        rows = rows_of(enc.take_audit())
        store.append([r for r in rows if not (drop_ledger and r.chain == enc.ledger_id)])
    return enc, store


def test_an_intact_store_verifies_with_states(tmp_path: Path) -> None:
    enc, store = _trail(tmp_path)
    findings = {f.chain: f for f in verify_store(store, {enc.kid: enc.public_key})}
    assert all(f.ok for f in findings.values())
    assert findings[known(enc, "a")].state == "closed" and findings[known(enc, "a")].count == 3
    assert findings[known(enc, "b")].state == "open" and findings[enc.ledger_id].count == 3


def test_a_store_without_the_ledger_is_withheld(tmp_path: Path) -> None:
    enc, store = _trail(tmp_path, drop_ledger=True)
    findings = {f.chain: f for f in verify_store(store, {enc.kid: enc.public_key})}
    assert findings[enc.ledger_id].code is Code.AUDIT_WITHHELD


def test_chains_of_an_enclave_without_a_key_do_not_verify(tmp_path: Path) -> None:
    _, store = _trail(tmp_path)
    findings = verify_store(store, {})
    assert findings and all(f.code is Code.AUDIT_BAD_SIGNATURE for f in findings)
