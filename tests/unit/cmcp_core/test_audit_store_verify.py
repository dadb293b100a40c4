"""Whole-store verification: each chain, the ledger, withheld sessions and ledgers, missing keys,
and a principal taken over from a trail a gateway cut short.

The command around it, with the attacker's deletions and forks, is tested in
tests/unit/cmcp_ctl/test_audit_cmd.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cmcp_core import audit_store_verify as verify_mod
from cmcp_core.audit_store import AuditStore, open_audit_store, rows_of, trail_for
from cmcp_core.audit_store_verify import verify_store
from cmcp_core.errors import Code
from cmcp_devkit.enclave import NO_TRAIL, carried, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide, known, peer_attestation
from tests.paths import EXAMPLES


def _trail(tmp_path: Path, *, drop_ledger: bool = False) -> tuple[Enclave, AuditStore]:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "enc")
    decide(enc, "web.search", {"query": "a"}, session="a")
    decide(enc, "web.search", {"query": "b"}, session="b")
    enc.close(known(enc, "a"))
    store = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    while len(enc.outbox):
        rows = rows_of(carried(enc))
        store.append([r for r in rows if not (drop_ledger and r.chain == enc.ledger_id)])
    return enc, store


def test_an_intact_store_verifies_with_states(tmp_path: Path) -> None:
    enc, store = _trail(tmp_path)
    findings = {f.chain: f for f in verify_store(store, {enc.kid: enc.public_key})}
    assert all(f.ok for f in findings.values())
    assert findings[known(enc, "a")].state == "closed" and findings[known(enc, "a")].count == 3
    assert findings[known(enc, "b")].state == "open" and findings[enc.ledger_id].count == 4  # with an adopt


def test_a_store_without_the_ledger_is_withheld(tmp_path: Path) -> None:
    enc, store = _trail(tmp_path, drop_ledger=True)
    findings = {f.chain: f for f in verify_store(store, {enc.kid: enc.public_key})}
    assert findings[enc.ledger_id].code is Code.AUDIT_WITHHELD


def test_chains_of_an_enclave_without_a_key_do_not_verify(tmp_path: Path) -> None:
    _, store = _trail(tmp_path)
    findings = verify_store(store, {})
    assert findings and all(f.code is Code.AUDIT_BAD_SIGNATURE for f in findings)


# --- a takeover from a trail the gateway cut short ---------------------------------------------


def _takeover(tmp_path: Path, *, withheld: bool,
              elsewhere: bool = False) -> tuple[AuditStore, dict[str, Any]]:
    """``old`` lets agent-a read PHI; ``new`` takes agent-a over from its whole trail, or from
    none (a gateway that withholds it); both enclaves' entries in one store. ``elsewhere``: agent-a
    also made a call on an enclave of another bundle (another route), which is in no trail here."""
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    decide(old, "ehr.read_patient_record", {"patient_id": "p"}, session="phi")
    store = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    keys = {old.kid: old.public_key, new.kid: new.public_key}
    enclaves = [old]
    if elsewhere:
        bundle = tmp_path / "other-bundle"
        shutil.copytree(EXAMPLES / "realistic", bundle)
        policy = bundle / "policies" / "taint.cedar"
        policy.write_text(policy.read_text() + "\n// another route's bundle\n")
        other = inprocess_enclave(bundle, tmp_path / "other")
        assert other.bundle_hash != new.bundle_hash
        decide(other, "web.search", {"query": "x"}, session="elsewhere")
        enclaves.append(other)
        keys[other.kid] = other.public_key
    for enc in enclaves:
        while len(enc.outbox):
            store.append(rows_of(carried(enc)))
    seen = peer_attestation(old)
    store.put_attestation(old.kid, seen.nonce, seen.attestation.SerializeToString())
    whole = trail_for(store, "agent-a", owner=new.kid, bundle_hash=new.bundle_hash, now=new.clock())
    trail = NO_TRAIL if withheld else whole
    new.open_session("agent-a", trail=trail)
    while len(new.outbox):
        store.append(rows_of(carried(new)))
    return store, keys


def test_a_takeover_from_a_cut_trail_is_reported(tmp_path: Path) -> None:
    store, keys = _takeover(tmp_path, withheld=True)
    codes = [f.code for f in verify_store(store, keys) if not f.ok]
    assert codes == [Code.AUDIT_PRINCIPAL_WITHHELD]


def test_a_takeover_from_the_whole_trail_verifies(tmp_path: Path) -> None:
    store, keys = _takeover(tmp_path, withheld=False)
    assert all(f.ok for f in verify_store(store, keys))


def test_calls_on_another_routes_enclave_are_not_missing_from_a_takeovers_trail(tmp_path: Path) -> None:
    """The trail is the route's own (its bundle and audience): the principal's calls elsewhere do
    not make a whole takeover look withheld, and a cut one is still reported."""
    store, keys = _takeover(tmp_path / "whole", withheld=False, elsewhere=True)
    assert all(f.ok for f in verify_store(store, keys))
    store, keys = _takeover(tmp_path / "cut", withheld=True, elsewhere=True)
    assert [f.code for f in verify_store(store, keys) if not f.ok] == [Code.AUDIT_PRINCIPAL_WITHHELD]


def test_weakened_verifier_without_the_takeover_check_misses_the_cut_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, keys = _takeover(tmp_path, withheld=True)
    monkeypatch.setattr(verify_mod, "_verify_takeovers", lambda store, chains, keys: [])
    assert all(f.ok for f in verify_store(store, keys))
