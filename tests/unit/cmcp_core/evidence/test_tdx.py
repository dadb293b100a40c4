"""The TDX DCAP quote parser on the real Intel sample quote, synthetic v5 forms and bad input."""

from __future__ import annotations

import struct

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.tdx import (
    HEADER_LEN,
    INTEL_QE_VENDOR_ID,
    MAX_QUOTE_BYTES,
    TD10_BODY_LEN,
    parse_quote,
)
from tests.paths import DATA as TEST_DATA

DATA = TEST_DATA / "tdx"
RAW = (DATA / "tdx_quote").read_bytes()
SIG_END = 4936  # the sample carries 70 zero bytes of buffer padding after the signature data


def test_real_quote_fields() -> None:
    q = parse_quote(RAW)
    assert q.header.version == 4 and q.header.tee_type == 0x81 and q.header.att_key_type == 2
    assert q.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert q.body.mrtd.hex().startswith("91eb2b44d141d4ec")
    assert q.body.report_data.hex().startswith("9a9d48e7f6799642")
    assert q.body.rtmrs[0].hex().startswith("44c0197b39157fdd") and q.body.rtmrs[3] == bytes(48)
    assert q.body.mrconfigid == bytes(48) and not q.body.debug
    assert q.signed_bytes == RAW[: HEADER_LEN + TD10_BODY_LEN]
    cert = q.signature_data.certification
    assert cert.cert_type == 6 and cert.qe_report is not None and cert.inner is not None
    assert cert.inner.cert_type == 5
    chain = x509.load_pem_x509_certificates(cert.pck_chain_pem or b"")
    assert len(chain) == 3 and "Intel SGX PCK Certificate" in chain[0].subject.rfc4514_string()


def _as_v5(raw: bytes, body_type: int = 2, extra: bytes = b"") -> bytes:
    header = bytearray(raw[:HEADER_LEN])
    header[0:2] = struct.pack("<H", 5)
    body = raw[HEADER_LEN : HEADER_LEN + TD10_BODY_LEN] + extra
    return bytes(header) + struct.pack("<HI", body_type, len(body)) + body + raw[HEADER_LEN + TD10_BODY_LEN :]


def test_v5_td10_and_td15_bodies() -> None:
    v5 = parse_quote(_as_v5(RAW))
    assert v5.header.version == 5 and v5.body.body_type == 2
    assert v5.body == parse_quote(RAW).body
    assert len(v5.signed_bytes) == HEADER_LEN + 6 + TD10_BODY_LEN  # the type/size descriptor is signed
    extra = b"\x11" * 16 + b"\x22" * 48
    td15 = parse_quote(_as_v5(RAW, 3, extra))
    assert td15.body.tee_tcb_svn2 == b"\x11" * 16 and td15.body.mrservicetd == b"\x22" * 48
    with pytest.raises(EvidenceError) as err:
        parse_quote(_as_v5(RAW, 3))  # TD15 type with a TD10-sized body
    assert err.value.code is Code.EVIDENCE_MALFORMED
    with pytest.raises(EvidenceError) as err:
        parse_quote(_as_v5(RAW, 1))  # SGX enclave report body
    assert err.value.code is Code.EVIDENCE_UNSUPPORTED


@pytest.mark.parametrize(
    ("offset", "value", "code"),
    [
        (0, b"\x03\x00", Code.EVIDENCE_UNSUPPORTED),  # version 3 (SGX-era)
        (4, b"\x00\x00\x00\x00", Code.EVIDENCE_UNSUPPORTED),  # tee type SGX
        (2, b"\x03\x00", Code.EVIDENCE_UNSUPPORTED),  # attestation key type P-384
        (HEADER_LEN + TD10_BODY_LEN, b"\xff\xff\x00\x00", Code.EVIDENCE_MALFORMED),  # sig length
    ],
)
def test_bad_header_fields(offset: int, value: bytes, code: Code) -> None:
    raw = bytearray(RAW)
    raw[offset : offset + len(value)] = value
    with pytest.raises(EvidenceError) as err:
        parse_quote(bytes(raw))
    assert err.value.code is code


def test_trailing_garbage_and_oversize_refused() -> None:
    with pytest.raises(EvidenceError) as err:
        parse_quote(RAW + b"\x01")
    assert err.value.code is Code.EVIDENCE_MALFORMED
    with pytest.raises(EvidenceError) as err:
        parse_quote(RAW + bytes(MAX_QUOTE_BYTES))
    assert err.value.code is Code.EVIDENCE_MALFORMED
    parse_quote(RAW[:SIG_END])  # zero padding is optional


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=SIG_END - 1))
def test_every_truncation_is_a_coded_error(cut: int) -> None:
    with pytest.raises(EvidenceError) as err:
        parse_quote(RAW[:cut])
    assert err.value.code in (Code.EVIDENCE_MALFORMED, Code.EVIDENCE_UNSUPPORTED)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=6000))
def test_random_bytes_never_escape(data: bytes) -> None:
    try:
        q = parse_quote(data)
    except EvidenceError as exc:
        assert exc.code in (Code.EVIDENCE_MALFORMED, Code.EVIDENCE_UNSUPPORTED)
    else:  # only a structurally complete quote may parse
        assert q.header.version in (4, 5) and len(q.body.report_data) == 64


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(RAW) - 1), st.integers(min_value=1, max_value=255))
def test_flipped_quotes_parse_or_fail_coded(pos: int, xor: int) -> None:
    raw = bytearray(RAW)
    raw[pos] ^= xor
    try:
        parse_quote(bytes(raw))
    except EvidenceError as exc:
        assert isinstance(exc.code, Code)


def test_non_bytes_input() -> None:
    with pytest.raises(EvidenceError):
        parse_quote("not bytes")  # type: ignore[arg-type]
