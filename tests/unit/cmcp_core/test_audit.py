"""Audit chain: verifies offline; deletion, reordering, editing, forging and truncation are
each caught with a stable code by the library. ``cmcpctl audit verify`` on top of it:
``tests/unit/cmcp_ctl/test_audit_cmd.py``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.audit import GENESIS, entry_hash, make_entry, verify_chain, verify_entry
from cmcp_core.errors import Code
from cmcp_devkit.enclave import carried, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide, exported, known
from tests.paths import EXAMPLES


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Enclave, list[dict[str, Any]]]:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="s")
    decide(enc, "email.send_external", {"to": ["bob@partner.example"]}, session="s")
    decide(enc, "résumé.parse", {"body": "Zoë"}, session="s")
    enc.close(known(enc, "s"))
    return enc, exported(enc, "s")


def test_exported_chain_verifies_from_genesis(chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    enc, entries = chain
    assert entries[0]["prev"] == GENESIS and entries[0]["kind"] == "open"
    assert [e["kind"] for e in entries] == ["open", "decision", "decision", "decision", "close"]
    result = verify_chain(entries, enc.public_key, expected_tip=enc.closed[known(enc, "s")].tip)
    record = enc.closed[known(enc, "s")].record
    assert result.ok and result.count == 5 and result.tip == record["tool_transcript"]["hash"]


@pytest.mark.parametrize("index", [0, 2, 4])
def test_deleting_any_entry_is_detected(chain: tuple[Enclave, list[dict[str, Any]]], index: int) -> None:
    enc, entries = chain
    del entries[index]
    result = verify_chain(entries, enc.public_key, expected_tip=enc.closed[known(enc, "s")].tip)
    assert not result.ok
    assert result.code in (Code.AUDIT_SEQ_GAP, Code.AUDIT_TRUNCATED)


Chain = tuple[Enclave, list[dict[str, Any]]]


def test_deleting_the_tail_is_caught_against_the_record_tip(chain: Chain) -> None:
    enc, entries = chain
    assert verify_chain(entries[:-1], enc.public_key).ok  # a chain prefix is self-consistent...
    result = verify_chain(entries[:-1], enc.public_key, expected_tip=enc.closed[known(enc, "s")].tip)
    assert (result.ok, result.code) == (False, Code.AUDIT_TRUNCATED)  # ...but not the recorded one


def test_reordering_is_detected(chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    enc, entries = chain
    entries[1], entries[2] = entries[2], entries[1]
    result = verify_chain(entries, enc.public_key)
    assert (result.ok, result.code, result.index) == (False, Code.AUDIT_SEQ_GAP, 1)


def test_reordering_with_renumbered_seq_is_detected(chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    enc, entries = chain
    entries[1], entries[2] = entries[2], entries[1]
    entries[1]["seq"], entries[2]["seq"] = 1, 2
    result = verify_chain(entries, enc.public_key)
    assert not result.ok and result.code == Code.AUDIT_CHAIN_BROKEN


def test_editing_an_entry_is_detected(chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    enc, entries = chain
    entries[2]["data"]["decision"] = "allow"
    result = verify_chain(entries, enc.public_key)
    assert (result.ok, result.code, result.index) == (False, Code.AUDIT_ENTRY_EDITED, 2)


def test_edit_with_recomputed_hash_fails_the_signature(chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    enc, entries = chain
    entries[2]["data"]["decision"] = "allow"
    entries[2]["hash"] = entry_hash(entries[2])
    result = verify_chain(entries, enc.public_key)
    assert (result.ok, result.code, result.index) == (False, Code.AUDIT_BAD_SIGNATURE, 2)


def test_a_rebuilt_chain_signed_by_another_key_is_rejected(chain: Chain) -> None:
    enc, entries = chain
    forger = Ed25519PrivateKey.generate()
    forged, prev = [], GENESIS
    for e in entries:
        f = make_entry(forger, session_id=e["session_id"], seq=e["seq"], prev=prev, kind=e["kind"],
                       data=e["data"], kid=e["kid"], ts_ms=e["ts"])
        forged.append(f)
        prev = f["hash"]
    assert verify_chain(forged, forger.public_key()).ok is False  # kid is the enclave's, not the forger's
    result = verify_chain(forged, enc.public_key)
    assert (result.ok, result.code) == (False, Code.AUDIT_BAD_SIGNATURE)


def test_malformed_entries(chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    enc, entries = chain
    for bad in ({}, {**entries[0], "extra": 1}, {**entries[0], "seq": True}, "text"):
        result = verify_chain([bad], enc.public_key)  # type: ignore[list-item]
        assert (result.ok, result.code) == (False, Code.AUDIT_MALFORMED)
    mixed = copy.deepcopy(entries)
    mixed[1]["session_id"] = "other"
    assert verify_chain(mixed, enc.public_key).code == Code.AUDIT_CHAIN_BROKEN


def test_decision_entries_carry_the_decision_signature_the_gateway_saw(tmp_path: Path) -> None:
    from cmcp_core.decision import verify_decision
    from cmcp_core.digest import b64url, jcs

    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    res = decide(enc, "web.search", {"query": "q"}, session="g")
    answer = carried(enc)  # what the Decide answer carries: the opens, then the decision
    raw = answer[-1]
    entry = json.loads(raw)
    assert entry["kind"] == "decision" and entry["sig"] == b64url(res.signature)
    assert jcs(entry["data"]) == res.decision_json
    verify_decision(jcs(entry["data"]), res.signature, enc.public_key)
    # the bytes that leave the enclave are exactly the canonical form of the entry
    chain = [json.loads(r) for r in answer if json.loads(r)["session_id"] == known(enc, "g")]
    assert raw == jcs(entry) and verify_chain(chain, enc.public_key).ok


def test_decision_entry_fields_must_match_the_signed_document(chain: Chain) -> None:
    enc, entries = chain
    entries[1]["ts"] += 1  # a field outside `data` that the decision signature vouches for
    entries[1]["hash"] = entry_hash(entries[1])
    for later in entries[2:]:
        later["prev"] = "x"  # irrelevant: verification stops at the first bad entry
    result = verify_chain(entries, enc.public_key)
    assert (result.ok, result.code, result.index) == (False, Code.AUDIT_BAD_SIGNATURE, 1)


def test_one_entry_verifies_on_its_own_and_any_edit_or_other_key_fails(
        chain: tuple[Enclave, list[dict[str, Any]]]) -> None:
    """What a takeover checks of each entry of a principal's trail (no chain around it)."""
    enc, entries = chain
    decision = next(e for e in entries if e["kind"] == "decision")
    assert all(verify_entry(e, enc.public_key) for e in entries)
    edited = copy.deepcopy(decision)
    edited["data"]["tool"] = "web.search"
    rehashed = {**edited, "hash": entry_hash(edited)}  # a careful forger fixes the hash too
    assert not verify_entry(edited, enc.public_key) and not verify_entry(rehashed, enc.public_key)
    assert not verify_entry(decision, Ed25519PrivateKey.generate().public_key())
    assert not verify_entry({**decision, "extra": 1}, enc.public_key)
