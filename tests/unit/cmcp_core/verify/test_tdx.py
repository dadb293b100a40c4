"""TDX verification with the real dcap-qvl on the real Intel quote and collateral."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta

import dcap_qvl
import pytest

from cmcp_core.errors import Code
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify import AppraisalPolicy, appraise_evidence
from cmcp_core.verify.tdx import classify_dcap_error
from tests.paths import DATA as TEST_DATA

DATA = TEST_DATA / "tdx"
QUOTE = (DATA / "tdx_quote").read_bytes()
COLLATERAL = (DATA / "tdx_quote_collateral.json").read_text()
_ISSUE = json.loads(json.loads(COLLATERAL)["tcb_info"])["issueDate"]
PINNED = datetime.fromisoformat(_ISSUE.replace("Z", "+00:00")) + timedelta(hours=1)
SIGNED_LEN = len(parse_quote(QUOTE).signed_bytes)


def test_up_to_date_at_pinned_time() -> None:
    v = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED)
    assert v.passed and v.code == "OK", v.message
    assert v.assurance == "hardware" and v.tcb_status == "UpToDate" and v.advisories == ()
    assert v.measurements["mrtd"].startswith("91eb2b44")


def test_collateral_object_and_bytes_forms() -> None:
    obj = dcap_qvl.QuoteCollateralV3.from_json(COLLATERAL)
    assert appraise_evidence("tdx", QUOTE, collateral=obj, now=PINNED).passed
    assert appraise_evidence("tdx", QUOTE, collateral=COLLATERAL.encode(), now=int(PINNED.timestamp())).passed


def test_today_is_a_coded_expiry_not_a_crash() -> None:
    v = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=int(time.time()))
    assert not v.passed and v.code == Code.COLLATERAL_EXPIRED
    before = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED - timedelta(days=2))
    assert not before.passed and before.code == Code.COLLATERAL_EXPIRED


def test_twenty_random_flips_in_the_signed_region_fail() -> None:
    rng = random.Random(0xC3C9)  # fixed seed: the same 20 positions every run
    positions = rng.sample(range(SIGNED_LEN), 20)
    for pos in positions:
        raw = bytearray(QUOTE)
        raw[pos] ^= rng.randrange(1, 256)
        v = appraise_evidence("tdx", bytes(raw), collateral=COLLATERAL, now=PINNED)
        assert not v.passed, f"flip at {pos} passed"
        assert v.code in {c.value for c in Code}


@pytest.mark.parametrize(
    "pos", [SIGNED_LEN + 4 + 10, SIGNED_LEN + 4 + 64 + 10, SIGNED_LEN + 4 + 128 + 6 + 100]
)
def test_flips_in_signature_key_and_qe_report_fail(pos: int) -> None:
    raw = bytearray(QUOTE)
    raw[pos] ^= 0x01
    v = appraise_evidence("tdx", bytes(raw), collateral=COLLATERAL, now=PINNED)
    assert not v.passed


def test_status_policy_is_applied() -> None:
    strict = AppraisalPolicy(accepted_tcb_statuses=frozenset({"OutOfDate"}))
    v = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED, policy=strict)
    assert not v.passed and v.code == Code.TCB_STATUS_REJECTED and v.tcb_status is None


def test_reference_values() -> None:
    q = parse_quote(QUOTE)
    good = AppraisalPolicy(mrtd=q.body.mrtd, rtmrs={0: q.body.rtmrs[0], 3: bytes(48)})
    assert appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED, policy=good).passed
    for bad in (AppraisalPolicy(mrtd=bytes(48)), AppraisalPolicy(rtmrs={1: bytes(48)})):
        v = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED, policy=bad)
        assert not v.passed and v.code == Code.REFERENCE_VALUE_MISMATCH


def test_missing_or_garbage_collateral() -> None:
    assert appraise_evidence("tdx", QUOTE, now=PINNED).code == Code.COLLATERAL_INVALID
    assert appraise_evidence("tdx", QUOTE, collateral="{}", now=PINNED).code == Code.COLLATERAL_INVALID
    assert appraise_evidence("tdx", QUOTE, collateral=b"\xff\x00", now=PINNED).code == Code.COLLATERAL_INVALID
    tampered = json.loads(COLLATERAL)
    tampered["tcb_info"] = tampered["tcb_info"].replace('"UpToDate"', '"UpToDatE"', 1)
    v = appraise_evidence("tdx", QUOTE, collateral=json.dumps(tampered), now=PINNED)
    assert not v.passed and v.code == Code.COLLATERAL_INVALID
    resigned = json.loads(COLLATERAL)  # a valid status edit: the TCB info signature must catch it
    resigned["tcb_info"] = resigned["tcb_info"].replace('"OutOfDate"', '"UpToDate"', 1)
    assert resigned["tcb_info"] != json.loads(COLLATERAL)["tcb_info"]
    v = appraise_evidence("tdx", QUOTE, collateral=json.dumps(resigned), now=PINNED)
    assert not v.passed and v.code == Code.COLLATERAL_INVALID, v.message


def test_simulated_quote_is_never_hardware() -> None:
    sim = SimulatedQuoteSigner().quote(bytes(64), bytes(48))
    v = appraise_evidence("tdx", sim, collateral=COLLATERAL, now=PINNED)
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
    a = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED.astimezone(UTC))
    b = appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED.timestamp())
    assert a.passed and b.passed


def test_policy_from_chart_values() -> None:
    q = parse_quote(QUOTE)
    policy = AppraisalPolicy.from_json(
        {
            "acceptedTcbStatuses": ["UpToDate", "SWHardeningNeeded"],
            "allowSimulated": True,
            "mrtd": q.body.mrtd.hex(),
            "rtmrs": {"0": q.body.rtmrs[0].hex()},
            "snpMinTcb": {"snp": 24},
            "simulatorKeys": ["ab" * 64],
        }
    )
    assert policy.accepted_tcb_statuses == {"UpToDate", "SWHardeningNeeded"} and policy.allow_simulated
    assert policy.rtmrs == {0: q.body.rtmrs[0]} and policy.simulator_keys == {bytes.fromhex("ab" * 64)}
    assert appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, now=PINNED, policy=policy).passed
    assert AppraisalPolicy.from_json({}) == AppraisalPolicy()
