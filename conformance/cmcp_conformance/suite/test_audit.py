"""AUDIT-001..005: every call lands in a signed, genesis-rooted chain that an auditor can verify
offline with the attested key, and whose tip the Trust Record commits to."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance.suite.conftest import Attested, need_enclave
from cmcp_conformance.suite.sessions import run_session, standard_calls
from cmcp_conformance.target import TargetDeployment
from cmcp_core.audit import GENESIS, verify_chain
from cmcp_core.crypto import public_jwk
from cmcp_core.digest import json_digest


@pytest.mark.conformance("AUDIT-001")
def test_every_call_has_a_decision_entry(target: TargetDeployment, attested: Attested) -> None:
    calls = standard_calls(target)
    session = run_session(target, calls)
    decisions = session.decision_entries()
    assert [d["data"]["tool"] for d in decisions] == [tool for tool, _ in calls], (
        f"decision entries {[d['data']['tool'] for d in decisions]} do not match the calls made"
    )
    assert [d["data"]["effective"] for d in decisions] == ["allow", "deny", "deny"]
    assert [d["data"]["reason_code"] for d in decisions] == [None, "POLICY_DENY", "TOOL_NOT_IN_CATALOG"]
    for (_, arguments, outcome), entry in zip(session.calls, decisions, strict=True):
        assert entry["data"]["args_digest"] == json_digest(arguments)
        if not outcome.ok:
            assert outcome.data and entry["data"]["call_id"] == outcome.data.get("call_id"), (
                "the denied call's call_id is not the audited one"
            )


@pytest.mark.conformance("AUDIT-002")
def test_chain_runs_from_genesis_to_the_record_tip(target: TargetDeployment, attested: Attested) -> None:
    session = run_session(target, standard_calls(target))
    entries = session.entries
    assert entries and entries[0]["seq"] == 0 and entries[0]["prev"] == GENESIS, (
        "chain does not start at genesis"
    )
    for earlier, later in itertools.pairwise(entries):
        assert later["prev"] == earlier["hash"] and later["seq"] == earlier["seq"] + 1
    result = verify_chain(entries, attested.key, expected_tip=session.record["tool_transcript"]["hash"])
    assert result.ok, f"{result.code}: {result.message}"


@pytest.mark.conformance("AUDIT-003")
def test_entries_are_signed_by_the_attested_key_only(target: TargetDeployment, attested: Attested) -> None:
    session = run_session(target, standard_calls(target))
    assert session.decision_entries(), "no decision entries to check"
    assert all(e["kid"] == attested.kid for e in session.entries), "an entry names another key"
    assert verify_chain(session.entries, attested.key).ok
    impostor = verify_chain(session.entries, Ed25519PrivateKey.generate().public_key())
    assert not impostor.ok and impostor.code is not None and impostor.code.value == "AUDIT_BAD_SIGNATURE"


@pytest.mark.conformance("AUDIT-004")
def test_outcomes_recorded_and_arguments_only_digested(target: TargetDeployment, attested: Attested) -> None:
    canary = "canary-" + secrets.token_hex(8)
    session = run_session(target, [(target.profile.allowed_tool, {"text": canary})])
    _, _, outcome = session.calls[0]
    assert outcome.ok, outcome.describe()
    completes = [e for e in session.entries if e["kind"] == "complete"]
    assert completes, "the allowed call's outcome was never recorded"
    data = completes[0]["data"]
    assert data.get("response_digest") == json_digest(outcome.result), (
        f"recorded response digest {data.get('response_digest')} is not the digest of the result received"
    )
    assert canary not in json.dumps(session.entries, ensure_ascii=False), (
        "argument values appear in clear in the audit export"
    )


def _cmcpctl() -> list[str]:
    return [sys.executable, "-m", "cmcp_ctl.main"]


@pytest.mark.conformance("AUDIT-005")
def test_cmcpctl_audit_verify_accepts_export_and_rejects_edit(
    target: TargetDeployment, attested: Attested, tmp_path: Path
) -> None:
    need_enclave(target)
    session = run_session(target, standard_calls(target))
    work = tmp_path
    key_file = work / "enclave.jwk"
    key_file.write_text(json.dumps(public_jwk(attested.key)))
    good = work / "audit.jsonl"
    good.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in session.entries))
    edited_entries = json.loads(json.dumps(session.entries))
    denied = [e for e in edited_entries if e["kind"] == "decision" and e["data"]["effective"] == "deny"]
    assert denied, "no denied decision in the export to tamper with"
    denied[0]["data"]["effective"] = "allow"  # the host rewrites a deny into an allow
    assert edited_entries != session.entries
    edited = work / "audit-edited.jsonl"
    edited.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in edited_entries))

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_cmcpctl(), "audit", "verify", str(path), "--key", str(key_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = verify(good)
    assert ok.returncode == 0, f"cmcpctl audit verify rejected a genuine export: {ok.stdout}{ok.stderr}"
    bad = verify(edited)
    assert bad.returncode == 1, f"cmcpctl audit verify did not reject an edited export (rc {bad.returncode})"
