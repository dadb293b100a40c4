"""VLEK, Turin and TCB-extension paths of the SNP verifier, on a chain signed by a test root.

No genuine VLEK or Turin report exists in the fixtures, so these tests build a real chain
(RSA-PSS SHA-384 ARK -> ASK -> P-384 VCEK/VLEK) with test keys and make *that* ARK the pinned
one for the duration of the test. Everything else - parsing, signatures, extension checks - is
the production code on real cryptography.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cmcp_core.errors import Code
from cmcp_core.evidence.snp import SIGNED_LEN
from cmcp_core.verify import snp as snp_verify
from cmcp_core.verify.verdict import AppraisalPolicy, VerifyFailure
from tests.paths import DATA

RAW = base64.b64decode(
    json.loads((DATA / "snp-azure" / "evidence.json").read_text())[
        "snp_report"
    ]
)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _cert(
    subject: str, issuer: str, key: object, signer: rsa.RSAPrivateKey, exts: dict[str, bytes] | None = None
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)
        .serial_number(x509.random_serial_number())  # type: ignore[arg-type]
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
    )
    for oid, value in (exts or {}).items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return b.sign(signer, hashes.SHA384(), rsa_padding=PSS)


@dataclass
class Chain:
    product: str
    leaf_key: ec.EllipticCurvePrivateKey
    pem: bytes
    ark: x509.Certificate


ARK_KEY = rsa.generate_private_key(65537, 2048)
ASK_KEY = rsa.generate_private_key(65537, 2048)


def _chain(product: str, vlek: bool, spl: dict[str, int], hwid: bytes | None) -> Chain:
    title = product.title()
    ark = _cert(f"ARK-{title}", f"ARK-{title}", ARK_KEY.public_key(), ARK_KEY)
    ask_cn = f"SEV-VLEK-{title}" if vlek else f"SEV-{title}"
    ask = _cert(ask_cn, f"ARK-{title}", ASK_KEY.public_key(), ARK_KEY)
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    exts = {oid: _der_int(v) for oid, v in spl.items()}
    if hwid is not None:
        exts[snp_verify.OID_HWID] = hwid
    leaf = _cert("SEV-VLEK" if vlek else "SEV-VCEK", ask_cn, leaf_key.public_key(), ASK_KEY, exts)
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, ask, ark))
    return Chain(product, leaf_key, pem, ark)


def _report(
    chain: Chain,
    *,
    signing_key: int,
    tcb: bytes,
    cpuid: tuple[int, int] | None = None,
    chip_id: bytes | None = None,
) -> bytes:
    raw = bytearray(RAW)
    struct.pack_into("<I", raw, 0x48, signing_key << 2)
    raw[0x180:0x188] = tcb
    if cpuid is not None:
        raw[0x188], raw[0x189] = cpuid
    if chip_id is not None:
        raw[0x1A0:0x1E0] = chip_id
    r, s = decode_dss_signature(chain.leaf_key.sign(bytes(raw[:SIGNED_LEN]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


@pytest.fixture
def pin(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, x509.Certificate]]:
    roots: dict[str, x509.Certificate] = {}
    monkeypatch.setattr(snp_verify, "pinned_ark", lambda product: roots[product])
    yield roots


MILAN_TCB = bytes([3, 0, 0, 0, 0, 0, 0x17, 0xD1])  # bl 3, tee 0, snp 0x17, ucode 0xd1
MILAN_SPL = {
    snp_verify.OID_BL_SPL: 3,
    snp_verify.OID_TEE_SPL: 0,
    snp_verify.OID_SNP_SPL: 0x17,
    snp_verify.OID_UCODE_SPL: 0xD1,
}
CHIP = bytes(range(64))


def _verify(report: bytes, chain: Chain) -> snp_verify.SnpAppraisal:
    return snp_verify.verify_snp_report(report, chain.pem, int(NOW.timestamp()), AppraisalPolicy())


def test_vcek_chain_with_test_root(pin: dict[str, x509.Certificate]) -> None:
    chain = _chain("milan", False, MILAN_SPL, CHIP)
    pin["milan"] = chain.ark
    a = _verify(_report(chain, signing_key=0, tcb=MILAN_TCB, chip_id=CHIP), chain)
    assert a.signing_key == "vcek" and a.tcb.snp == 0x17
    with pytest.raises(VerifyFailure) as err:  # the report says VLEK, the key is a VCEK
        _verify(_report(chain, signing_key=1, tcb=MILAN_TCB, chip_id=CHIP), chain)
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID
    with pytest.raises(VerifyFailure) as err:
        _verify(_report(chain, signing_key=7, tcb=MILAN_TCB, chip_id=CHIP), chain)
    assert err.value.code is Code.EVIDENCE_UNSUPPORTED
    with pytest.raises(VerifyFailure) as err:  # SNP SPL in the report above the certified one
        _verify(
            _report(chain, signing_key=0, tcb=MILAN_TCB[:6] + b"\x18" + MILAN_TCB[7:], chip_id=CHIP), chain
        )
    assert err.value.code is Code.TCB_MISMATCH
    with pytest.raises(VerifyFailure) as err:  # another chip's report
        _verify(_report(chain, signing_key=0, tcb=MILAN_TCB, chip_id=bytes(64)), chain)
    assert err.value.code is Code.TCB_MISMATCH


def test_vlek_chain_is_accepted(pin: dict[str, x509.Certificate]) -> None:
    chain = _chain("milan", True, MILAN_SPL, None)
    pin["milan"] = chain.ark
    a = _verify(_report(chain, signing_key=1, tcb=MILAN_TCB, chip_id=bytes(64)), chain)
    assert a.signing_key == "vlek"
    with pytest.raises(VerifyFailure) as err:  # the report says VCEK, the key is a VLEK
        _verify(_report(chain, signing_key=0, tcb=MILAN_TCB), chain)
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID


def test_turin_layout_and_short_hwid(pin: dict[str, x509.Certificate]) -> None:
    tcb = bytes([5, 4, 3, 0x20, 0, 0, 0, 0x44])  # fmc 5, bl 4, tee 3, snp 0x20, ucode 0x44
    spl = {
        snp_verify.OID_FMC_SPL: 5,
        snp_verify.OID_BL_SPL: 4,
        snp_verify.OID_TEE_SPL: 3,
        snp_verify.OID_SNP_SPL: 0x20,
        snp_verify.OID_UCODE_SPL: 0x44,
    }
    chain = _chain("turin", False, spl, CHIP[:8])
    pin["turin"] = chain.ark
    a = _verify(_report(chain, signing_key=0, tcb=tcb, cpuid=(0x1A, 0x02), chip_id=CHIP), chain)
    assert a.product == "turin" and a.tcb.fmc == 5 and a.tcb.snp == 0x20
    with pytest.raises(VerifyFailure) as err:  # a Milan CPU cannot present a Turin chain
        _verify(_report(chain, signing_key=0, tcb=tcb, cpuid=(0x19, 0x01), chip_id=CHIP), chain)
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID
    no_fmc = _chain("turin", False, {k: v for k, v in spl.items() if k != snp_verify.OID_FMC_SPL}, CHIP[:8])
    pin["turin"] = no_fmc.ark
    with pytest.raises(VerifyFailure) as err:
        _verify(_report(no_fmc, signing_key=0, tcb=tcb, cpuid=(0x1A, 0x02), chip_id=CHIP), no_fmc)
    assert err.value.code is Code.TCB_MISMATCH


def test_test_root_is_refused_without_the_pin() -> None:
    chain = _chain("milan", False, MILAN_SPL, CHIP)
    with pytest.raises(VerifyFailure) as err:
        _verify(_report(chain, signing_key=0, tcb=MILAN_TCB, chip_id=CHIP), chain)
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID
    without_ark = chain.pem[: chain.pem.rindex(b"-----BEGIN CERTIFICATE-----")]
    with pytest.raises(VerifyFailure) as err:  # omitting the ARK does not help: the pinned one is used
        snp_verify.verify_snp_report(
            _report(chain, signing_key=0, tcb=MILAN_TCB, chip_id=CHIP),
            without_ark,
            int(NOW.timestamp()),
            AppraisalPolicy(),
        )
    assert err.value.code is Code.EVIDENCE_CHAIN_INVALID
