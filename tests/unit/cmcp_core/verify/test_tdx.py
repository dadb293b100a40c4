"""TDX verification with the real dcap-qvl on the real Intel quote and collateral."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dcap_qvl
import pytest

from cmcp_core.errors import Code
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_evidence
from cmcp_core.verify.reference import TdxReference
from cmcp_core.verify.tdx import classify_dcap_error
from cmcp_devkit.release import release_of
from tests.paths import DATA as TEST_DATA

DATA = TEST_DATA / "tdx"
QUOTE = (DATA / "tdx_quote").read_bytes()
COLLATERAL = (DATA / "tdx_quote_collateral.json").read_text()
_ISSUE = json.loads(json.loads(COLLATERAL)["tcb_info"])["issueDate"]
PINNED = datetime.fromisoformat(_ISSUE.replace("Z", "+00:00")) + timedelta(hours=1)
SIGNED_LEN = len(parse_quote(QUOTE).signed_bytes)
RELEASE = release_of("tdx", QUOTE)
POLICY = AppraisalPolicy(releases=(RELEASE,))


def appraise(evidence: bytes = QUOTE, *, collateral: Any = COLLATERAL, now: Any = PINNED,
             policy: AppraisalPolicy = POLICY) -> Verdict:
    return appraise_evidence("tdx", evidence, collateral=collateral, now=now, policy=policy)


def test_up_to_date_at_pinned_time() -> None:
    v = appraise()
    assert v.passed and v.code == "OK", v.message
    assert v.assurance == "hardware" and v.tcb_status == "UpToDate" and v.advisories == ()
    assert v.measurements["mrtd"].startswith("91eb2b44")


def test_collateral_object_and_bytes_forms() -> None:
    obj = dcap_qvl.QuoteCollateralV3.from_json(COLLATERAL)
    assert appraise(collateral=obj).passed
    assert appraise(collateral=COLLATERAL.encode(), now=int(PINNED.timestamp())).passed


def test_today_is_a_coded_expiry_not_a_crash() -> None:
    v = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=int(time.time()), policy=POLICY)
    assert not v.passed and v.code == Code.COLLATERAL_EXPIRED
    before = appraise(now=PINNED - timedelta(days=2))
    assert not before.passed and before.code == Code.COLLATERAL_EXPIRED


def test_twenty_random_flips_in_the_signed_region_fail() -> None:
    rng = random.Random(0xC3C9)  # fixed seed: the same 20 positions every run
    positions = rng.sample(range(SIGNED_LEN), 20)
    for pos in positions:
        raw = bytearray(QUOTE)
        raw[pos] ^= rng.randrange(1, 256)
        v = appraise(bytes(raw))
        assert not v.passed, f"flip at {pos} passed"
        assert v.code in {c.value for c in Code}


@pytest.mark.parametrize(
    "pos", [SIGNED_LEN + 4 + 10, SIGNED_LEN + 4 + 64 + 10, SIGNED_LEN + 4 + 128 + 6 + 100]
)
def test_flips_in_signature_key_and_qe_report_fail(pos: int) -> None:
    raw = bytearray(QUOTE)
    raw[pos] ^= 0x01
    v = appraise(bytes(raw))
    assert not v.passed


def test_status_policy_is_applied() -> None:
    strict = AppraisalPolicy(accepted_tcb_statuses=frozenset({"OutOfDate"}), releases=(RELEASE,))
    v = appraise(policy=strict)
    assert not v.passed and v.code == Code.TCB_STATUS_REJECTED and v.tcb_status is None


def _with_tdx(**changes: object) -> AppraisalPolicy:
    assert RELEASE.tdx is not None
    tdx = dataclasses.replace(RELEASE.tdx, **changes)  # type: ignore[arg-type]
    return AppraisalPolicy(releases=(dataclasses.replace(RELEASE, tdx=tdx),))


def test_a_genuine_intel_quote_of_another_guest_is_refused() -> None:
    """Real Intel evidence, but firmware, boot chain, TCB or attributes other than the release's."""
    ref = RELEASE.tdx
    assert isinstance(ref, TdxReference)
    svn_above = bytes([ref.min_tee_tcb_svn[0] + 1]) + ref.min_tee_tcb_svn[1:]
    cases = {
        "MRTD": (_with_tdx(mrtd=bytes(48)), Code.REFERENCE_VALUE_MISMATCH),
        "RTMR1": (_with_tdx(rtmrs=(ref.rtmrs[0], bytes(48), ref.rtmrs[2])), Code.REFERENCE_VALUE_MISMATCH),
        "TEE_TCB_SVN": (_with_tdx(min_tee_tcb_svn=svn_above), Code.TCB_MISMATCH),
        "TD attributes": (_with_tdx(td_attributes=b"\x01" + bytes(7)), Code.REFERENCE_VALUE_MISMATCH),
        "no tdx values": (AppraisalPolicy(releases=(dataclasses.replace(RELEASE, tdx=None),)),
                          Code.REFERENCE_VALUE_MISMATCH),
        "no release": (AppraisalPolicy(), Code.REFERENCE_VALUES_MISSING),
    }
    for what, (policy, code) in cases.items():
        v = appraise(policy=policy)
        assert not v.passed and v.code == code, (what, v.message)
    assert appraise().checks[-1] == "release:fixture"


def test_missing_or_garbage_collateral() -> None:
    assert appraise(collateral=None).code == Code.COLLATERAL_INVALID
    assert appraise(collateral="{}").code == Code.COLLATERAL_INVALID
    assert appraise(collateral=b"\xff\x00").code == Code.COLLATERAL_INVALID
    tampered = json.loads(COLLATERAL)
    tampered["tcb_info"] = tampered["tcb_info"].replace('"UpToDate"', '"UpToDatE"', 1)
    v = appraise(collateral=json.dumps(tampered))
    assert not v.passed and v.code == Code.COLLATERAL_INVALID
    resigned = json.loads(COLLATERAL)  # a valid status edit: the TCB info signature must catch it
    resigned["tcb_info"] = resigned["tcb_info"].replace('"OutOfDate"', '"UpToDate"', 1)
    assert resigned["tcb_info"] != json.loads(COLLATERAL)["tcb_info"]
    v = appraise(collateral=json.dumps(resigned))
    assert not v.passed and v.code == Code.COLLATERAL_INVALID, v.message


def test_simulated_quote_is_never_hardware() -> None:
    sim = SimulatedQuoteSigner().quote(bytes(64), bytes(48))
    v = appraise(sim)
    assert not v.passed and v.code == Code.EVIDENCE_UNSUPPORTED and v.assurance == "none"


def test_dcap_error_classification() -> None:
    cases = {
        "Verification failed: CrlExpired { time: 1, next_update: 0 }": Code.COLLATERAL_EXPIRED,
        "Verification failed: TCBInfo issue date is in the future": Code.COLLATERAL_EXPIRED,
        "Verification failed: ISV enclave report signature is invalid": Code.EVIDENCE_BAD_SIGNATURE,
        "Signature is invalid for tcb_info in quote_collateral": Code.COLLATERAL_INVALID,
        "TCB status is invalid: Revoked": Code.TCB_STATUS_REJECTED,
        "Unknown QE vendor ID": Code.EVIDENCE_UNSUPPORTED,
        "Fmspc mismatch": Code.COLLATERAL_INVALID,
        "something new": Code.EVIDENCE_REJECTED,
        "Failed to decode TcbInfo\n\nCaused by:\n  expected Revoked": Code.COLLATERAL_INVALID,
    }
    for message, code in cases.items():
        assert classify_dcap_error(message) is code, message


def test_now_accepts_datetime_and_seconds() -> None:
    a = appraise(now=PINNED.astimezone(UTC))
    b = appraise(now=PINNED.timestamp())
    assert a.passed and b.passed
