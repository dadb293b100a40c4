"""The SPDM GET_MEASUREMENTS decoder and the GPU evidence envelope, on NVIDIA's real Hopper reports."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.gpu import (
    MAX_ENVELOPE_BYTES,
    REQUEST_LEN,
    SIGNATURE_LEN,
    GpuEvidence,
    decode_gpu_evidence,
    gpu_evidence_file,
    parse_gpu_report,
    read_gpu_evidence_file,
    report_from_hex,
)
from tests.helpers import gpu_samples


def _malformed(raw: bytes) -> None:
    with pytest.raises(EvidenceError) as info:
        parse_gpu_report(raw)
    assert info.value.code == Code.GPU_EVIDENCE_MALFORMED


def test_the_real_2_0_report_decodes_to_its_nonce_versions_and_64_measurements() -> None:
    report = parse_gpu_report(gpu_samples.report())
    assert report.request.nonce == gpu_samples.NONCE_2_0
    assert report.request.slot_id == 0
    assert (report.driver_version, report.vbios_version) == ("545.00", "96.00.5e.00.01")
    assert (report.project, report.project_sku, report.chip_sku) == ("1010", "0200", "882")
    assert sorted(report.measurements) == list(range(1, 65))
    assert all(len(v) == 48 for v in report.measurements.values())
    assert report.fwid is None and report.nvdec0_disabled
    assert report.signed_bytes + report.signature == report.raw and len(report.signature) == SIGNATURE_LEN


def test_the_rim_ids_name_the_sample_rims() -> None:
    driver_id, vbios_id = parse_gpu_report(gpu_samples.report()).rim_ids()
    assert driver_id == "NV_GPU_DRIVER_GH100_545.00"
    assert vbios_id == "NV_GPU_VBIOS_1010_0200_882_96005E0001"
    assert gpu_samples.VBIOS_RIM.startswith(vbios_id.removeprefix("NV_GPU_VBIOS_"))


def test_the_real_2_7_report_carries_its_fwid_and_newer_versions() -> None:
    report = parse_gpu_report(gpu_samples.report("hopperAttestationReport.txt"))
    assert report.request.nonce == gpu_samples.NONCE_2_7
    assert (report.driver_version, report.vbios_version) == ("550.90.07", "96.00.9f.00.01")
    assert report.fwid is not None and len(report.fwid) == 48


def test_a_truncated_or_extended_report_is_malformed() -> None:
    raw = gpu_samples.report()
    _malformed(raw[:-1])
    _malformed(raw + b"\x00")
    _malformed(raw[:REQUEST_LEN + 40])


def test_a_request_that_is_not_a_signed_get_all_measurements_is_malformed() -> None:
    raw = bytearray(gpu_samples.report())
    for offset, value in ((0, 0x12), (1, 0xE1), (2, 0x00), (3, 0x01)):
        bad = bytearray(raw)
        bad[offset] = value
        _malformed(bytes(bad))


def test_a_response_with_a_wrong_code_or_a_lying_record_length_is_malformed() -> None:
    raw = gpu_samples.report()
    bad = bytearray(raw)
    bad[REQUEST_LEN + 1] = 0x61
    _malformed(bytes(bad))
    bad = bytearray(raw)
    bad[REQUEST_LEN + 5] ^= 0x01  # MeasurementRecordLength one byte off
    _malformed(bytes(bad))
    bad = bytearray(raw)
    bad[REQUEST_LEN + 4] = 65  # one block more than the record holds
    _malformed(bytes(bad))


def test_a_repeated_block_index_or_a_non_dmtf_block_is_malformed() -> None:
    raw = bytearray(gpu_samples.report())
    first = REQUEST_LEN + 8
    second = first + 4 + 51
    dup = bytearray(raw)
    dup[second] = dup[first]
    _malformed(bytes(dup))
    spec = bytearray(raw)
    spec[first + 1] = 0x02
    _malformed(bytes(spec))


def test_an_opaque_field_that_overruns_its_data_is_malformed() -> None:
    raw = bytearray(gpu_samples.report())
    record_len = int.from_bytes(raw[REQUEST_LEN + 5:REQUEST_LEN + 8], "little")
    opaque_at = REQUEST_LEN + 8 + record_len + 32 + 2
    struct.pack_into("<H", raw, opaque_at + 2, 0xFFFF)
    _malformed(bytes(raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_escape_as_anything_but_a_coded_error(blob: bytes) -> None:
    try:
        parse_gpu_report(bytes([0x11, 0xE0, 0x01, 0xFF]) + blob)
    except EvidenceError as exc:
        assert exc.code == Code.GPU_EVIDENCE_MALFORMED


def test_the_envelope_round_trips() -> None:
    evidence = GpuEvidence(report=gpu_samples.report(), certs=gpu_samples.chain_der(), ocsp=(b"x",))
    assert decode_gpu_evidence(evidence.encode()) == evidence


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(format="other"),
    lambda d: d.update(arch="ampere"),
    lambda d: d.update(simulated="yes"),
    lambda d: d.update(certs=[]),
    lambda d: d.update(certs=["!!"]),
    lambda d: d.update(report=7),
    lambda d: d.update(ocsp=["AA=="] * 17),
])
def test_a_bad_envelope_is_malformed(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(gpu_samples.envelope())
    mutate(doc)
    with pytest.raises(EvidenceError) as info:
        decode_gpu_evidence(json.dumps(doc).encode())
    assert info.value.code == Code.GPU_EVIDENCE_MALFORMED


def test_an_oversized_or_non_json_envelope_is_malformed() -> None:
    for blob in (b"{" + b" " * MAX_ENVELOPE_BYTES, b"\xff", base64.b64encode(b"x")):
        with pytest.raises(EvidenceError) as info:
            decode_gpu_evidence(blob)
        assert info.value.code == Code.GPU_EVIDENCE_MALFORMED


def test_report_hex_that_is_not_hex_is_malformed() -> None:
    with pytest.raises(EvidenceError) as info:
        report_from_hex("11e0zz")
    assert info.value.code == Code.GPU_EVIDENCE_MALFORMED


def test_the_gpu_evidence_file_round_trips_the_exact_bytes_and_reads_an_attest_response() -> None:
    """The bytes come back as carried (their digests are what a record names), and an
    AttestResponse's protobuf JSON (base64url too, as protobuf's parser accepts) reads the same."""
    envelopes = (b'{"format": "cmcp-gpu-evidence-v1"}', bytes(range(256)), b"")
    assert read_gpu_evidence_file(gpu_evidence_file(envelopes)) == envelopes
    urlsafe = json.dumps({"platform": "simulated", "gpuEvidence": [
        base64.urlsafe_b64encode(e).decode().rstrip("=") for e in envelopes]}).encode()
    assert read_gpu_evidence_file(urlsafe) == envelopes
    assert read_gpu_evidence_file(b'{"platform": "simulated"}') == ()  # a response without GPUs


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"gpuEvidence": "x"}', b'{"gpuEvidence": [1]}',
                                 b'{"gpuEvidence": ["***"]}', b" " * (16 * MAX_ENVELOPE_BYTES + 1)])
def test_a_bad_gpu_evidence_file_is_malformed(raw: bytes) -> None:
    with pytest.raises(EvidenceError) as info:
        read_gpu_evidence_file(raw)
    assert info.value.code == Code.GPU_EVIDENCE_MALFORMED
