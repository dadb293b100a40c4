"""AUDIT-001..006: every call lands in a signed, genesis-rooted chain that an auditor can verify
offline with the attested key, and whose tip the Trust Record commits to; the deployment's audit
store holds every entry, and a session withheld from it is reported."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance.agent import agent
from cmcp_conformance.suite.conftest import Attested, need_enclave, need_store
from cmcp_conformance.suite.sessions import await_completions, run_session, standard_calls
from cmcp_conformance.target import TargetDeployment
from cmcp_core.audit import GENESIS, ledger_id, verify_chain
from cmcp_core.audit_store import AuditStore, open_audit_store, rows_of
from cmcp_core.audit_store_verify import Finding, verify_store
from cmcp_core.crypto import public_jwk
from cmcp_core.digest import json_digest
from cmcp_core.errors import Code


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


def _findings(store: AuditStore, attested: Attested) -> dict[str, Finding]:
    """The auditor's verdict on every chain of the attested enclave in ``store``, by chain."""
    return {f.chain: f for f in verify_store(store, {attested.kid: attested.key}) if f.kid == attested.kid}


def _copy_without(source: str, kid: str, withheld: str, path: Path) -> AuditStore:
    """A copy of one enclave's part of the store, as a host would hand it over minus one session."""
    store, copy = open_audit_store(source), open_audit_store(f"sqlite:{path}")
    try:
        for summary in store.chains():
            if summary.kid == kid and summary.chain != withheld:
                copy.append(rows_of(store.entries(kid, summary.chain)))
    finally:
        store.close()
    return copy


@pytest.mark.conformance("AUDIT-006")
def test_the_store_holds_every_entry_and_a_withheld_session_is_reported(
    target: TargetDeployment, attested: Attested, tmp_path: Path
) -> None:
    source = need_store(target)
    prof = target.profile
    calls = [(prof.allowed_tool, {"text": f"trail-{n}"}) for n in range(3)]
    calls.append((prof.denied_tool, {"text": "x"}))

    async def scenario() -> str:
        async with agent(target) as a:
            for made, (tool, arguments) in enumerate(calls, start=1):
                await a.call(tool, arguments)
                decided = [e for e in target.export_audit(a.session_id) if e["kind"] == "decision"]
                assert len(decided) == made, (
                    f"after call {made} the store holds {len(decided)} decision entries: a call went on "
                    "before its decision was stored"
                )
            return a.session_id

    session_id = asyncio.run(scenario())
    allowed = sum(1 for tool, _ in calls if tool == prof.allowed_tool)
    entries = await_completions(target, session_id, allowed)
    outcomes = [e for e in entries if e["kind"] == "complete"]
    assert len(outcomes) == allowed, f"{allowed} calls ran, the store holds {len(outcomes)} outcomes"

    store = open_audit_store(source)
    try:
        verdict = _findings(store, attested)
    finally:
        store.close()
    for chain in (ledger_id(attested.kid), session_id):
        found = verdict.get(chain)
        assert found is not None and found.ok, f"the store's {chain} does not verify: {found}"

    copy = _copy_without(source, attested.kid, session_id, tmp_path / "withheld.sqlite")
    try:
        withheld = _findings(copy, attested).get(session_id)
    finally:
        copy.close()
    assert withheld is not None and withheld.code is Code.AUDIT_WITHHELD, (
        f"a store without session {session_id} was not reported as withholding it: {withheld}"
    )
