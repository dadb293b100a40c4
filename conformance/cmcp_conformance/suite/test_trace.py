"""TRACE-001..003: the Trust Record at session close verifies with the attested key only, states
the measured facts, and survives non-ASCII tool names."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from agentrust_trace import verify_record
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance.suite.conftest import Attested
from cmcp_conformance.suite.sessions import run_session, standard_calls
from cmcp_conformance.target import TargetDeployment
from cmcp_core.audit import verify_chain
from cmcp_core.crypto import public_jwk
from cmcp_core.verify.appraise import SIMULATED_PLATFORMS
from cmcp_core.verify.record import verify_trust_record


def _accepts(record: dict[str, Any], key: Any) -> bool:
    try:
        verify_record(record, key)
    except Exception:  # InvalidSignature or ValueError: both are rejections
        return False
    return True


@pytest.mark.conformance("TRACE-001")
def test_record_verifies_with_the_attested_key_only(target: TargetDeployment, attested: Attested) -> None:
    record = run_session(target, standard_calls(target)).record
    assert _accepts(record, attested.key), "agentrust_trace rejects the record with the attested key pinned"
    assert not _accepts(record, Ed25519PrivateKey.generate().public_key()), (
        "record verifies under a stranger's key"
    )
    edits = {
        "policy.bundle_hash": ("policy", "bundle_hash", "sha256:" + "0" * 64),
        "tool_transcript.hash": ("tool_transcript", "hash", "sha256:" + "1" * 64),
        "runtime.platform": (
            "runtime",
            "platform",
            "snp" if record.get("runtime", {}).get("platform") == "tdx" else "tdx",
        ),
    }
    for name, (section, key, value) in edits.items():
        edited = copy.deepcopy(record)
        assert section in edited, f"record has no {section}"
        edited[section][key] = value
        assert edited != record, f"editing {name} changed nothing"
        assert not _accepts(edited, attested.key), f"record still verifies after editing {name}"


@pytest.mark.conformance("TRACE-002")
def test_record_states_the_measured_facts(target: TargetDeployment, attested: Attested) -> None:
    session = run_session(target, standard_calls(target))
    record = session.record
    assert record["policy"]["bundle_hash"] == attested.response.bundle_hash
    assert record["policy"]["enforcement_mode"] == attested.response.enforcement_mode
    assert record["cnf"]["jwk"]["x"] == public_jwk(attested.key)["x"], "cnf.jwk is not the attested key"
    if attested.response.platform in SIMULATED_PLATFORMS:
        assert record["runtime"]["platform"] == "software-only", record["runtime"]
    else:
        assert record["runtime"]["platform"] != "software-only"
    verdict = verify_trust_record(
        record,
        verdict=attested.verdict,
        audit_entries=session.entries,
        pinned_bundle_hash=target.expected_bundle_hash,
    )
    assert verdict.passed, f"cMCP record verification: {verdict.code} {verdict.message}"


@pytest.mark.conformance("TRACE-003")
def test_non_ascii_tool_name_end_to_end(target: TargetDeployment, attested: Attested) -> None:
    tool = target.profile.non_ascii_tool
    assert not tool.isascii(), "profile's non-ASCII tool name is ASCII"
    session = run_session(target, [(tool, {"text": "déjà vu — 検索"})])
    _, _, outcome = session.calls[0]
    assert outcome.ok, f"call to {tool!r} failed: {outcome.describe()}"
    assert [e["data"]["tool"] for e in session.decision_entries()] == [tool], "tool name altered in the chain"
    assert verify_chain(
        session.entries, attested.key, expected_tip=session.record["tool_transcript"]["hash"]
    ).ok
    assert _accepts(session.record, attested.key), "record with a non-ASCII tool name does not verify"
