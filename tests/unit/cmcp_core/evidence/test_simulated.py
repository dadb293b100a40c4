"""The simulated quote: real TDX v4 layout, distinct markers, simulator signature."""

from __future__ import annotations

import os

import pytest

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.simulated import (
    SIMULATED_CERT_TYPE,
    SIMULATED_QE_VENDOR_ID,
    SimulatedQuoteSigner,
    is_simulated,
    verify_simulated_quote,
)
from cmcp_core.evidence.tdx import HEADER_LEN, INTEL_QE_VENDOR_ID, TD10_BODY_LEN, parse_quote
from tests.paths import DATA

INTEL_QUOTE = (DATA / "tdx" / "tdx_quote").read_bytes()


def test_round_trip_through_the_tdx_parser() -> None:
    signer = SimulatedQuoteSigner()
    rd, cfg = os.urandom(64), os.urandom(48)
    raw = signer.quote(rd, cfg)
    q = parse_quote(raw)
    assert q.header.version == 4 and q.header.tee_type == 0x81
    assert q.header.qe_vendor_id == SIMULATED_QE_VENDOR_ID != INTEL_QE_VENDOR_ID
    assert q.body.report_data == rd and q.body.mrconfigid == cfg and not q.body.debug
    assert q.signature_data.attestation_key == signer.attestation_key
    assert q.signature_data.certification.cert_type == SIMULATED_CERT_TYPE
    assert is_simulated(q) and verify_simulated_quote(raw).body == q.body


def test_every_signed_byte_is_covered() -> None:
    raw = SimulatedQuoteSigner().quote(os.urandom(64), os.urandom(48))
    for pos in range(12, HEADER_LEN + TD10_BODY_LEN, 7):  # vendor id onwards, every 7th byte
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        with pytest.raises(EvidenceError):
            verify_simulated_quote(bytes(flipped))


def test_signature_and_key_tamper() -> None:
    raw = bytearray(SimulatedQuoteSigner().quote(os.urandom(64), os.urandom(48)))
    sig_at = HEADER_LEN + TD10_BODY_LEN + 4
    raw[sig_at + 5] ^= 0x80
    with pytest.raises(EvidenceError) as err:
        verify_simulated_quote(bytes(raw))
    assert err.value.code is Code.EVIDENCE_BAD_SIGNATURE


def test_pinned_simulator_keys() -> None:
    a, b = SimulatedQuoteSigner(), SimulatedQuoteSigner()
    raw = a.quote(bytes(64), bytes(48))
    assert verify_simulated_quote(raw, {a.attestation_key})
    with pytest.raises(EvidenceError) as err:
        verify_simulated_quote(raw, {b.attestation_key})
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID


def test_intel_quote_is_not_simulated() -> None:
    with pytest.raises(EvidenceError) as err:
        verify_simulated_quote(INTEL_QUOTE)
    assert err.value.code is Code.EVIDENCE_UNSUPPORTED


def test_bad_sizes_refused() -> None:
    with pytest.raises(ValueError):
        SimulatedQuoteSigner().quote(bytes(63), bytes(48))
    with pytest.raises(ValueError):
        SimulatedQuoteSigner().quote(bytes(64), bytes(32))
