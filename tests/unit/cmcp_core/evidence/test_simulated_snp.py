"""The simulated SNP report: AMD's layout (the real parser decodes it), the simulator's markers,
its signature over every signed byte, pinned simulator keys, and AMD's path refusing it."""

from __future__ import annotations

import os

import pytest

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.simulated_snp import (
    SIMULATED_CHIP_ID,
    SIMULATED_SNP_MEASUREMENT,
    SIMULATED_SNP_POLICY,
    SimulatedReportSigner,
    is_simulated_report,
    simulated_cert_table,
    verify_simulated_report,
)
from cmcp_core.evidence.snp import SIGNED_LEN, SIGNING_KEY_VCEK, parse_report
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify import snp as amd
from cmcp_core.verify.snp import decode_snp_evidence, parse_cert_table, verify_snp_report
from cmcp_core.verify.verdict import VerifyFailure
from tests.paths import DATA

AMD = decode_snp_evidence((DATA / "snp-azure" / "evidence.json").read_bytes())


def test_round_trip_through_the_snp_parser() -> None:
    signer = SimulatedReportSigner()
    rd, host_data = os.urandom(64), os.urandom(32)
    raw = signer.report(rd, host_data)
    r = parse_report(raw)
    assert r.report_data == rd and r.host_data == host_data and r.measurement == SIMULATED_SNP_MEASUREMENT
    assert r.policy == SIMULATED_SNP_POLICY and not r.policy_debug and r.vmpl == 0
    assert r.signing_key == SIGNING_KEY_VCEK and r.chip_id == SIMULATED_CHIP_ID
    assert is_simulated_report(r) and verify_simulated_report(raw, signer.cert_table) == r


def test_every_signed_byte_is_covered() -> None:
    signer = SimulatedReportSigner()
    raw = signer.report(os.urandom(64), os.urandom(32))
    for pos in range(0, SIGNED_LEN, 5):
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        with pytest.raises(EvidenceError):  # a parse refusal, the marker gone, or the signature
            verify_simulated_report(bytes(flipped), signer.cert_table)


def test_a_flipped_measured_field_is_a_bad_signature() -> None:
    signer = SimulatedReportSigner()
    raw = bytearray(signer.report(os.urandom(64), os.urandom(32)))
    raw[0xC0] ^= 0x01  # HOST_DATA: a host rewriting what it measured
    with pytest.raises(EvidenceError) as err:
        verify_simulated_report(bytes(raw), signer.cert_table)
    assert err.value.code is Code.EVIDENCE_BAD_SIGNATURE


def test_signature_and_key_tamper() -> None:
    signer, other = SimulatedReportSigner(), SimulatedReportSigner()
    raw = bytearray(signer.report(os.urandom(64), os.urandom(32)))
    with pytest.raises(EvidenceError) as err:
        verify_simulated_report(bytes(raw), other.cert_table)  # another simulator's key
    assert err.value.code is Code.EVIDENCE_BAD_SIGNATURE
    raw[0x2A0 + 3] ^= 0x80
    with pytest.raises(EvidenceError) as err:
        verify_simulated_report(bytes(raw), signer.cert_table)
    assert err.value.code is Code.EVIDENCE_BAD_SIGNATURE


def test_pinned_simulator_keys() -> None:
    a, b = SimulatedReportSigner(), SimulatedReportSigner()
    raw = a.report(bytes(64), bytes(32))
    assert verify_simulated_report(raw, a.cert_table, {a.attestation_key})
    with pytest.raises(EvidenceError) as err:
        verify_simulated_report(raw, a.cert_table, {b.attestation_key})
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID


@pytest.mark.parametrize("aux", [
    b"",
    bytes(48),  # a terminator alone: no simulator entry
    simulated_cert_table(bytes(96))[:-1],  # truncated key
    simulated_cert_table(bytes(96)).replace(b"cmcp-simulated", b"amd-not-simula"),  # no label
])
def test_a_certificate_table_without_the_simulator_entry_is_refused(aux: bytes) -> None:
    raw = SimulatedReportSigner().report(bytes(64), bytes(32))
    with pytest.raises(EvidenceError) as err:
        verify_simulated_report(raw, aux)
    assert err.value.code is Code.EVIDENCE_MALFORMED


def test_an_amd_report_is_not_simulated() -> None:
    assert not is_simulated_report(parse_report(AMD.report))
    with pytest.raises(EvidenceError) as err:
        verify_simulated_report(AMD.report, SimulatedReportSigner().cert_table)
    assert err.value.code is Code.EVIDENCE_UNSUPPORTED


def test_the_simulators_table_holds_no_amd_certificate() -> None:
    assert parse_cert_table(SimulatedReportSigner().cert_table) == []


def test_amds_path_refuses_a_simulated_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with AMD's genuine VCEK chain beside it. Weakened: without the marker check, AMD's path
    still refuses it, as the report is not signed by that VCEK (and the simulator's own table
    carries no certificate at all), so a simulated report never chains to a pinned ARK."""
    signer = SimulatedReportSigner()
    raw = signer.report(bytes(64), bytes(32))
    assert AMD.chain is not None
    with pytest.raises(EvidenceError) as err:
        verify_snp_report(raw, AMD.chain, 0, AppraisalPolicy())
    assert err.value.code is Code.EVIDENCE_UNSUPPORTED
    monkeypatch.setattr(amd, "is_simulated_report", lambda _report: False)
    for chain, code in ((signer.cert_table, Code.EVIDENCE_CHAIN_INVALID),
                        (AMD.chain, Code.EVIDENCE_BAD_SIGNATURE)):
        with pytest.raises(VerifyFailure) as failure:
            verify_snp_report(raw, chain, 1785542400, AppraisalPolicy())  # inside the VCEK's validity
        assert failure.value.code is code, failure.value.detail


def test_bad_sizes_refused() -> None:
    signer = SimulatedReportSigner()
    with pytest.raises(ValueError):
        signer.report(bytes(63), bytes(32))
    with pytest.raises(ValueError):
        signer.report(bytes(64), bytes(48))
    with pytest.raises(ValueError):
        signer.report(bytes(64), bytes(32), measurement=bytes(32))
