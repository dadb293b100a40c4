"""SEV-SNP verification on the real Azure (Milan) report, VCEK chain and genuine pinned ARKs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
import uuid
import warnings
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.snp import TcbVersion, parse_report
from cmcp_core.verify import AppraisalPolicy, appraise_evidence
from cmcp_core.verify.snp import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    _check_tcb_extensions,
    ark_fingerprints,
    azure_report_data,
    decode_snp_evidence,
    pinned_ark,
    verify_snp_report,
)
from cmcp_core.verify.verdict import VerifyFailure
from cmcp_devkit.release import release_of
from tests.paths import DATA as TEST_DATA

DATA = TEST_DATA / "snp-azure"
EVIDENCE_BYTES = (DATA / "evidence.json").read_bytes()
EV = decode_snp_evidence(EVIDENCE_BYTES)
assert EV.chain is not None and EV.runtime_data is not None
CHAIN: bytes = EV.chain
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CERTS = x509.load_pem_x509_certificates(CHAIN)
DERS = [c.public_bytes(Encoding.DER) for c in CERTS]
NOW = int(datetime(2026, 8, 1, tzinfo=UTC).timestamp())  # inside the VCEK's validity
RELEASE = release_of("snp", EVIDENCE_BYTES)
POLICY = AppraisalPolicy(releases=(RELEASE,))

# Documented in docs/verification.md; genuine AMD roots (source: google/go-sev-guest verify/trust).
FINGERPRINTS = {
    "milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


def _pem(ders: list[bytes]) -> bytes:
    out = b""
    for d in ders:
        b64 = base64.encodebytes(d).replace(b"\n", b"")
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        out += b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"
    return out


def _verify(report: bytes = EV.report, chain: bytes = CHAIN, now: int = NOW) -> None:
    verify_snp_report(report, chain, now, POLICY)


def test_azure_report_verifies_to_genuine_ark_milan() -> None:
    a = verify_snp_report(EV.report, CHAIN, NOW, POLICY)
    assert a.product == "milan" and a.signing_key == "vcek"
    assert (a.tcb.bootloader, a.tcb.snp, a.tcb.microcode) == (4, 0x18, 0xDB)
    assert CERTS[2] == pinned_ark("milan")  # the fixture's root is the pinned one
    v = appraise_evidence("snp", EVIDENCE_BYTES, now=NOW, policy=POLICY)
    assert v.passed and v.assurance == "hardware" and "azure-runtime-data" in v.checks


def test_pinned_arks_are_genuine_self_signed_roots() -> None:
    assert ark_fingerprints() == FINGERPRINTS
    for product in FINGERPRINTS:
        ark = pinned_ark(product)
        assert ark.subject == ark.issuer
        assert ark.subject.rfc4514_string().startswith(f"CN=ARK-{product.title()},")
        key = ark.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
        key.verify(
            ark.signature,
            ark.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )


def test_chain_without_ark_uses_the_pinned_root() -> None:
    _verify(chain=_pem(DERS[:2]))


def test_certificate_table_form() -> None:
    entries = [(GUID_VCEK, DERS[0]), (GUID_ASK, DERS[1]), (GUID_ARK, DERS[2])]
    offset = 24 * (len(entries) + 1)
    table, blobs = b"", b""
    for guid, der in entries:
        table += guid.bytes_le + struct.pack("<II", offset + len(blobs), len(der))
        blobs += der
    _verify(chain=table + uuid.UUID(int=0).bytes_le + bytes(8) + blobs)
    with pytest.raises(VerifyFailure) as err:
        _verify(chain=table)  # neither terminated nor holding the certificates it points to
    assert err.value.code is Code.EVIDENCE_MALFORMED


def test_wrong_root_is_refused() -> None:
    genoa = pinned_ark("genoa").public_bytes(Encoding.DER)
    with pytest.raises(VerifyFailure) as err:
        _verify(chain=_pem([DERS[0], DERS[1], genoa]))
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID
    with pytest.raises(VerifyFailure) as err:
        _verify(chain=_pem([DERS[0]]))  # no ASK
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID
    with pytest.raises(VerifyFailure):
        _verify(chain=_pem([DERS[1], DERS[1], DERS[2]]))  # ASK in the leaf's place


@pytest.mark.parametrize("pos", [0x00, 0x08, 0x38, 0x50, 0x90, 0xC0, 0x180, 0x1A0, 0x29F])
def test_flipped_signed_byte_fails(pos: int) -> None:
    raw = bytearray(EV.report)
    raw[pos] ^= 0x01
    with pytest.raises((VerifyFailure, EvidenceError)):
        _verify(report=bytes(raw))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(EV.report) - 1), st.integers(min_value=1, max_value=255))
def test_any_flipped_report_byte_fails(pos: int, xor: int) -> None:
    raw = bytearray(EV.report)
    raw[pos] ^= xor
    with pytest.raises((VerifyFailure, EvidenceError)):
        _verify(report=bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2), st.data())
def test_any_flipped_certificate_byte_fails(which: int, data: st.DataObject) -> None:
    pos = data.draw(st.integers(min_value=0, max_value=len(DERS[which]) - 1))
    ders = list(DERS)
    b = bytearray(ders[which])
    b[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    ders[which] = bytes(b)
    with pytest.raises((VerifyFailure, EvidenceError)):
        _verify(chain=_pem(ders))


def test_certificate_validity_window() -> None:
    before = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp())  # VCEK issued 2026-07-20
    after = int(datetime(2034, 1, 1, tzinfo=UTC).timestamp())
    for now in (before, after):
        with pytest.raises(VerifyFailure) as err:
            _verify(now=now)
        assert err.value.code is Code.COLLATERAL_EXPIRED


def test_tcb_extensions_must_match_reported_tcb_and_chip_id() -> None:
    report = parse_report(EV.report)
    tcb = TcbVersion.decode(report.reported_tcb)
    _check_tcb_extensions(CERTS[0], tcb, report, "milan", False)
    for field in ("bootloader", "tee", "snp", "microcode"):
        with pytest.raises(VerifyFailure) as err:
            _check_tcb_extensions(
                CERTS[0], dataclasses.replace(tcb, **{field: getattr(tcb, field) + 1}), report, "milan", False
            )
        assert err.value.code is Code.TCB_MISMATCH
    other_chip = dataclasses.replace(report, chip_id=bytes(64))
    with pytest.raises(VerifyFailure) as err:
        _check_tcb_extensions(CERTS[0], tcb, other_chip, "milan", False)
    assert err.value.code is Code.TCB_MISMATCH
    _check_tcb_extensions(CERTS[0], tcb, other_chip, "milan", True)  # a VLEK carries no hwID


def _with_snp(**changes: object) -> AppraisalPolicy:
    snp = dataclasses.replace(RELEASE.snp, **changes)  # type: ignore[arg-type]
    return AppraisalPolicy(releases=(dataclasses.replace(RELEASE, snp=snp),))


def test_a_genuine_amd_report_of_another_guest_is_refused() -> None:
    """Real AMD evidence, but a measurement, policy, VMPL or TCB other than the release's."""
    assert RELEASE.snp is not None
    cases = {
        "MEASUREMENT": (_with_snp(measurement=bytes(48)), Code.REFERENCE_VALUE_MISMATCH),
        "guest policy": (_with_snp(policy=RELEASE.snp.policy ^ 1 << 19), Code.REFERENCE_VALUE_MISMATCH),
        "VMPL": (_with_snp(vmpl=RELEASE.snp.vmpl + 1), Code.REFERENCE_VALUE_MISMATCH),
        "microcode": (_with_snp(min_tcb={**RELEASE.snp.min_tcb, "microcode": 0xDC}), Code.TCB_MISMATCH),
        "no release": (AppraisalPolicy(), Code.REFERENCE_VALUES_MISSING),
    }
    for what, (policy, code) in cases.items():
        v = appraise_evidence("snp", EVIDENCE_BYTES, now=NOW, policy=policy)
        assert not v.passed and v.code == code, (what, v.message)
    assert (RELEASE.snp.min_tcb["snp"], RELEASE.snp.min_tcb["microcode"]) == (0x18, 0xDB)
    assert appraise_evidence("snp", EVIDENCE_BYTES, now=NOW, policy=_with_snp(min_tcb={"snp": 0x18})).passed


def test_azure_paravisor_binding_form() -> None:
    report = parse_report(EV.report)
    assert EV.runtime_data is not None
    assert report.report_data[:32] == hashlib.sha256(EV.runtime_data).digest()
    assert azure_report_data(report, EV.runtime_data) == bytes(64)  # the capture left user-data zero
    tampered = EV.runtime_data.replace(b'"tpm-enabled":true', b'"tpm-enabled":fals', 1)
    assert tampered != EV.runtime_data
    with pytest.raises(VerifyFailure) as err:
        azure_report_data(report, tampered)
    assert err.value.code is Code.BINDING_REPORT_DATA_MISMATCH
    doc = json.loads(EVIDENCE_BYTES)
    doc["runtime_data"] = base64.b64encode(tampered).decode()
    v = appraise_evidence("snp", json.dumps(doc).encode(), now=NOW, policy=POLICY)
    assert not v.passed and v.code == Code.BINDING_REPORT_DATA_MISMATCH


def test_bare_report_needs_a_chain() -> None:
    assert appraise_evidence("snp", EV.report, now=NOW, policy=POLICY).code == Code.COLLATERAL_INVALID
    assert appraise_evidence("snp", EV.report, aux=CHAIN, now=NOW, policy=POLICY).passed
    assert appraise_evidence("snp", b"{not json", now=NOW, policy=POLICY).code == Code.EVIDENCE_MALFORMED
