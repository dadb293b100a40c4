"""The verifier's result model and policy defaults: strict outcome and assurance never confused,
and a default policy that trusts nothing it was not told to."""

from __future__ import annotations

import json

from cmcp_core.errors import CmcpError, Code
from cmcp_core.verify import AppraisalPolicy, Verdict
from cmcp_core.verify.verdict import DEFAULT_TCB_STATUSES, OK, VerifyFailure, fail


def test_the_default_policy_trusts_nothing_it_was_not_told_to() -> None:
    policy = AppraisalPolicy()
    assert policy.releases == () and not policy.allow_simulated and not policy.allow_debug
    assert policy.accepted_tcb_statuses == DEFAULT_TCB_STATUSES == {"UpToDate"}
    assert policy.collateral_dir is None and policy.pccs_url is None and policy.simulator_keys is None


def test_a_failed_verdict_serialises_its_code_and_no_key() -> None:
    verdict = Verdict(passed=False, code=Code.REFERENCE_VALUE_MISMATCH.value, message="MRTD differs",
                      assurance="hardware", platform="tdx", checks=("dcap-qvl",))
    doc = json.loads(json.dumps(verdict.to_json()))
    assert doc["passed"] is False and doc["code"] == "REFERENCE_VALUE_MISMATCH"
    assert doc["assurance"] == "hardware" and doc["public_key_jwk"] is None and doc["checks"] == ["dcap-qvl"]
    assert not verdict.ok


def test_a_passed_verdict_keeps_assurance_apart_from_the_outcome() -> None:
    """"Software-only but consistent" passes with assurance software-only, never hardware."""
    verdict = Verdict(passed=True, code=OK, message="ok", assurance="software-only", platform="simulated",
                      bundle_hash="sha256:b", mode="enforce")
    doc = verdict.to_json()
    assert verdict.ok and doc["assurance"] == "software-only" and doc["enforcement_mode"] == "enforce"


def test_failures_are_coded_errors() -> None:
    failure = fail(Code.DEBUG_ENABLED, "TD attributes have DEBUG set")
    assert isinstance(failure, VerifyFailure) and isinstance(failure, CmcpError)
    assert failure.code is Code.DEBUG_ENABLED and failure.detail == "TD attributes have DEBUG set"
