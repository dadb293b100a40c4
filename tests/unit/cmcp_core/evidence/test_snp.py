"""The SEV-SNP report parser on the real Azure (Milan) report and on malformed input."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.snp import POLICY_DEBUG, REPORT_LEN, SIGNED_LEN, TcbVersion, parse_report
from tests.paths import DATA as TEST_DATA

DATA = TEST_DATA / "snp-azure"
EVIDENCE = json.loads((DATA / "evidence.json").read_text())
RAW = base64.b64decode(EVIDENCE["snp_report"])


def test_real_report_fields() -> None:
    r = parse_report(RAW)
    assert r.version == 3 and r.vmpl == 0 and r.signature_algo == 1
    assert not r.policy_debug and r.policy == 0x3001F
    assert r.signing_key == 0 and not r.mask_chip_id  # VCEK-signed
    assert r.product == "milan" and (r.cpuid_fam_id, r.cpuid_mod_id) == (0x19, 0x01)
    assert r.measurement.hex().startswith("5b0ce64ad1c1f637")
    assert r.host_data == bytes(32) and len(r.report_data) == 64
    assert r.chip_id.hex().startswith("a858face5852e75c")
    assert r.signed_bytes == RAW[:SIGNED_LEN] and len(r.signed_bytes) == 0x2A0
    tcb = TcbVersion.decode(r.reported_tcb)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (4, 0, 0x18, 0xDB)
    assert r.signature_r.to_bytes(72, "little")[:48] == RAW[0x2A0:0x2D0]


def test_turin_tcb_layout() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 0, 9])
    tcb = TcbVersion.decode(int.from_bytes(raw, "little"), turin=True)
    assert (tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (1, 2, 3, 4, 9)


def test_debug_bit_is_reported() -> None:
    raw = bytearray(RAW)
    struct.pack_into("<Q", raw, 0x08, parse_report(RAW).policy | POLICY_DEBUG)
    assert parse_report(bytes(raw)).policy_debug


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "code"),
    [
        (0x00, "<I", 1, Code.EVIDENCE_UNSUPPORTED),  # version 1
        (0x34, "<I", 2, Code.EVIDENCE_UNSUPPORTED),  # signature algorithm
        (0x30, "<I", 4, Code.EVIDENCE_MALFORMED),  # VMPL out of range
        (0x08, "<Q", 0, Code.EVIDENCE_MALFORMED),  # policy bit 17 must be one
        (0x400, "<I", 1, Code.EVIDENCE_MALFORMED),  # reserved signature bytes
    ],
)
def test_bad_fields(offset: int, fmt: str, value: int, code: Code) -> None:
    raw = bytearray(RAW)
    struct.pack_into(fmt, raw, offset, value)
    with pytest.raises(EvidenceError) as err:
        parse_report(bytes(raw))
    assert err.value.code is code


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000).filter(lambda b: len(b) != REPORT_LEN))
def test_wrong_length_is_malformed(data: bytes) -> None:
    with pytest.raises(EvidenceError) as err:
        parse_report(data)
    assert err.value.code is Code.EVIDENCE_MALFORMED


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=REPORT_LEN, max_size=REPORT_LEN))
def test_random_reports_never_escape(data: bytes) -> None:
    try:
        parse_report(data)
    except EvidenceError as exc:
        assert exc.code in (Code.EVIDENCE_MALFORMED, Code.EVIDENCE_UNSUPPORTED)


def test_truncated_and_oversized() -> None:
    for raw in (RAW[:-1], RAW + b"\x00", b""):
        with pytest.raises(EvidenceError):
            parse_report(raw)
