"""GPU appraisal: NVIDIA's real Hopper evidence verifies offline; every tampering fails with its own code."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st

from cmcp_core.binding import gpu_nonce
from cmcp_core.errors import Code
from cmcp_core.evidence.gpu import REQUEST_LEN
from cmcp_core.evidence.gpu_simulated import SimulatedGpu, simulated_measurements
from cmcp_core.verify import certchain
from cmcp_core.verify import gpu as gpu_verify
from cmcp_core.verify import rim as rim_verify
from cmcp_core.verify.certchain import fingerprint
from cmcp_core.verify.gpu import GpuPolicy, appraise_gpu
from cmcp_core.verify.verdict import GpuVerdict
from tests.helpers import gpu_samples
from tests.helpers.gpu_samples import NONCE_2_0, PINNED

SIM_AT = datetime(2024, 1, 2, tzinfo=UTC)  # inside the simulator's OCSP window
BLOCK = 4 + 3 + 48  # a measurement block of the sample: header, DMTF header, SHA-384 value
ALLOW_SIM = GpuPolicy(allow_simulated=True)


def _real(evidence: bytes | None = None, **kwargs) -> GpuVerdict:  # type: ignore[no-untyped-def]
    kwargs.setdefault("nonce", NONCE_2_0)
    kwargs.setdefault("rims", gpu_samples.rims())
    kwargs.setdefault("now", PINNED)
    return appraise_gpu(gpu_samples.envelope() if evidence is None else evidence, **kwargs)


def _flip(raw: bytes, offset: int) -> bytes:
    bad = bytearray(raw)
    bad[offset] ^= 0x01
    return bytes(bad)


# --- the real sample -------------------------------------------------------------------------------

def test_the_real_hopper_sample_verifies_against_the_real_rims_offline_at_a_pinned_time() -> None:
    verdict = _real()
    assert verdict.passed, verdict.message
    assert verdict.assurance == "hardware"
    assert (verdict.driver_version, verdict.vbios_version) == ("545.00", "96.00.5e.00.01")
    assert verdict.claims["measurements_matched"] == "32"  # 33 active, NVDEC0's skipped (disabled)
    assert verdict.checks == ("nvidia-device-chain", "spdm-signature", "nonce", "revocation:not-checked",
                              "rim-signatures", "rim-versions", "measurements")


def test_revocation_not_checked_is_said_in_the_verdict_never_silently() -> None:
    verdict = _real()
    assert verdict.revocation == "not-checked"
    assert "revocation not-checked" in verdict.message
    assert verdict.to_json()["revocation"] == "not-checked"


def test_the_newer_real_report_verifies_up_to_its_rims_which_are_for_other_versions() -> None:
    """NVIDIA's 2.7.3 pairs this report with RIMs for 545.00 / 96.00.5e.00.01: a real mismatched RIM."""
    verdict = _real(gpu_samples.newer_envelope(), nonce=gpu_samples.NONCE_2_7)
    assert verdict.code == Code.GPU_RIM_MISMATCH
    assert {"nvidia-device-chain", "spdm-signature", "nonce"} <= set(verdict.checks)  # FWID matched too


# --- one code per tampering ---------------------------------------------------------------------

def _tampering_cases() -> dict[str, GpuVerdict]:
    raw = gpu_samples.report()
    measurement_byte = REQUEST_LEN + 8 + BLOCK + 7  # first value byte of block 2, an active one
    certs = gpu_samples.chain_der()
    other_chain = gpu_samples.chain_der("hopperCertChain.txt")
    driver, vbios = gpu_samples.rims()
    expected_hash = b"0e0ee161b59bf124ce6b6dca6efa7616d28077862c0e57dca7d5efd63d00eeed"  # RIM index 7
    return {
        "flipped report byte": _real(gpu_samples.envelope(_flip(raw, measurement_byte))),
        "wrong nonce": _real(nonce=bytes(32)),
        "mismatched RIM": _real(rims=[driver, vbios, vbios]),
        "measurement differs": _simulated_with_one_measurement_changed(),
        "expired certificate": _real(now=datetime(2026, 12, 6, tzinfo=UTC)),
        "bad chain": _real(gpu_samples.envelope(certs=(certs[0], *other_chain[1:]))),
        "bad RIM signature": _real(rims=[driver.replace(expected_hash, b"1" + expected_hash[1:]), vbios]),
        "unsupported revocation policy": _real(policy=GpuPolicy(revocation="crl")),
        "malformed evidence": _real(b"{}"),
    }


def _simulated_with_one_measurement_changed() -> GpuVerdict:
    """NVIDIA signed no RIM that names the sample's versions with other values; the simulator does."""
    gpu = SimulatedGpu()
    nonce = bytes(range(32))
    changed = simulated_measurements()
    changed[5] = bytes(48)
    return appraise_gpu(gpu.evidence(nonce, measurements=changed), nonce=nonce,
                        rims=[gpu.rim("driver"), gpu.rim("vbios")], policy=ALLOW_SIM, now=PINNED)


def test_every_tampering_case_fails_with_its_own_code() -> None:
    cases = _tampering_cases()
    codes = {name: v.code for name, v in cases.items()}
    assert not any(v.passed for v in cases.values())
    assert codes["flipped report byte"] == Code.GPU_EVIDENCE_BAD_SIGNATURE
    assert codes["wrong nonce"] == Code.GPU_NONCE_MISMATCH
    assert codes["mismatched RIM"] == Code.GPU_RIM_MISMATCH
    assert codes["measurement differs"] == Code.GPU_MEASUREMENT_MISMATCH
    assert codes["expired certificate"] == Code.GPU_CERT_EXPIRED
    assert codes["bad chain"] == Code.GPU_CHAIN_INVALID
    assert codes["bad RIM signature"] == Code.GPU_RIM_BAD_SIGNATURE
    assert codes["unsupported revocation policy"] == Code.GPU_REVOCATION_UNSUPPORTED
    assert codes["malformed evidence"] == Code.GPU_EVIDENCE_MALFORMED
    assert len(set(codes.values())) == len(codes)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=4048), st.integers(min_value=1, max_value=255))
def test_any_changed_report_byte_fails_as_bad_signature_or_malformed(offset: int, mask: int) -> None:
    bad = bytearray(gpu_samples.report())
    bad[offset] ^= mask
    verdict = _real(gpu_samples.envelope(bytes(bad)))
    assert verdict.code in {Code.GPU_EVIDENCE_BAD_SIGNATURE, Code.GPU_EVIDENCE_MALFORMED}, verdict.message


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=4), st.data())
def test_any_changed_certificate_byte_fails_with_a_coded_error(which: int, data: st.DataObject) -> None:
    certs = list(gpu_samples.chain_der())
    bad = bytearray(certs[which])
    offset = data.draw(st.integers(min_value=0, max_value=len(bad) - 1))
    bad[offset] ^= data.draw(st.integers(min_value=1, max_value=255))
    certs[which] = bytes(bad)
    verdict = _real(gpu_samples.envelope(certs=tuple(certs)))
    assert not verdict.passed
    assert verdict.code in {Code.GPU_CHAIN_INVALID, Code.GPU_EVIDENCE_MALFORMED, Code.GPU_CERT_EXPIRED,
                            Code.GPU_EVIDENCE_BAD_SIGNATURE}, verdict.message


def test_a_measurement_that_differs_from_its_golden_value_names_its_rim_index() -> None:
    verdict = _simulated_with_one_measurement_changed()
    assert verdict.code == Code.GPU_MEASUREMENT_MISMATCH
    assert "[4]" in verdict.message  # SPDM block 5 is RIM index 4


def test_a_missing_measurement_fails_as_a_mismatch() -> None:
    gpu = SimulatedGpu()
    nonce = bytes(range(32))
    fewer = simulated_measurements()
    del fewer[2]
    verdict = appraise_gpu(gpu.evidence(nonce, measurements=fewer), nonce=nonce,
                           rims=[gpu.rim("driver"), gpu.rim("vbios")], policy=ALLOW_SIM, now=PINNED)
    assert verdict.code == Code.GPU_MEASUREMENT_MISMATCH


def test_a_chain_that_swaps_in_another_root_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    real_root = x509.load_der_x509_certificate(gpu_samples.chain_der()[-1])
    fake_root = (x509.CertificateBuilder().subject_name(real_root.subject).issuer_name(real_root.subject)
                 .public_key(key.public_key()).serial_number(1).not_valid_before(PINNED - timedelta(days=1))
                 .not_valid_after(PINNED + timedelta(days=1)).sign(key, hashes.SHA384()))
    certs = (*gpu_samples.chain_der()[:-1], fake_root.public_bytes(Encoding.DER))
    assert _real(gpu_samples.envelope(certs=certs)).code == Code.GPU_CHAIN_INVALID


def test_a_leaf_whose_fwid_is_not_the_reports_is_refused() -> None:
    doc = json.loads(gpu_samples.newer_envelope())
    raw = gpu_samples.report("hopperAttestationReport.txt")
    fwid_at = raw.index(bytes.fromhex("f5c384aebb579217"))
    doc["report"] = base64.b64encode(_flip(raw, fwid_at)).decode()
    verdict = _real(json.dumps(doc).encode(), nonce=gpu_samples.NONCE_2_7)
    assert verdict.code == Code.GPU_CHAIN_INVALID and "FWID" in verdict.message


def test_evidence_without_rims_is_not_verified() -> None:
    assert _real(rims=[]).code == Code.GPU_RIM_MISMATCH


def test_a_crash_inside_becomes_a_coded_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_verify, "_check_measurements", boom)
    verdict = _real()
    assert not verdict.passed and verdict.code == Code.VERIFY_INTERNAL_ERROR


# --- the weakened verifier ---------------------------------------------------------------------

def test_a_verifier_that_skips_the_signature_lets_a_tampered_report_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Block 14 (RIM index 13) is inactive in both RIMs, so only the signature protects it: the
    tampering test above would catch a verifier that forgot the signature."""
    tampered = gpu_samples.envelope(_flip(gpu_samples.report(), REQUEST_LEN + 8 + 13 * BLOCK + 7))
    assert _real(tampered).code == Code.GPU_EVIDENCE_BAD_SIGNATURE
    monkeypatch.setattr(gpu_verify, "_check_signature", lambda leaf, report: None)
    assert _real(tampered).passed


def _forged_by_a_software_gpu(nonce: bytes) -> bytes:
    """The attacker's own P-384 key answers a fresh nonce with the real GPU's measurements, under a
    leaf that names the real issuer: a software GPU pretending to be the sampled Hopper."""
    certs = [x509.load_der_x509_certificate(c) for c in gpu_samples.chain_der()]
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = (x509.CertificateBuilder().subject_name(certs[0].subject).issuer_name(certs[1].subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(PINNED - timedelta(days=1))
            .not_valid_after(PINNED + timedelta(days=1)).sign(key, hashes.SHA384()))
    raw = gpu_samples.report()
    signed = raw[:4] + nonce + raw[4 + 32:-96]
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    report = signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return gpu_samples.envelope(report, (leaf.public_bytes(Encoding.DER), *gpu_samples.chain_der()[1:]))


def test_a_verifier_that_skips_the_chain_accepts_a_software_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    nonce = bytes(range(32))
    forged = _forged_by_a_software_gpu(nonce)
    assert _real(forged, nonce=nonce).code == Code.GPU_CHAIN_INVALID
    monkeypatch.setattr(gpu_verify, "verify_chain", lambda certs, root, *_a, **_k: [*certs])
    assert _real(forged, nonce=nonce).passed


def test_a_verifier_that_skips_the_rim_signature_takes_forged_golden_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attacker who controls the RIM store writes golden values for the firmware it runs."""
    gpu = SimulatedGpu()
    changed = simulated_measurements()
    changed[8] = bytes(48)  # the GPU runs other firmware at block 8 (RIM index 7)...
    golden = simulated_measurements()[8].hex().encode()
    forged_rim = gpu.rim("driver").replace(golden, bytes(48).hex().encode())  # ...and the RIM agrees
    nonce = bytes(range(32))
    evidence = gpu.evidence(nonce, measurements=changed)
    rims = [forged_rim, gpu.rim("vbios")]
    assert appraise_gpu(evidence, nonce=nonce, rims=rims, policy=ALLOW_SIM, now=PINNED).code \
        == Code.GPU_RIM_BAD_SIGNATURE

    class NoSignatureCheck:
        def verify(self, doc, **_k):  # type: ignore[no-untyped-def]
            for sig in doc.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
                doc.remove(sig)
            return type("Result", (), {"signed_xml": doc})()

    monkeypatch.setattr(rim_verify, "XMLVerifier", NoSignatureCheck)
    assert appraise_gpu(evidence, nonce=nonce, rims=rims, policy=ALLOW_SIM, now=PINNED).passed


def test_a_verifier_that_skips_the_nonce_accepts_replayed_evidence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _real(nonce=bytes(32)).code == Code.GPU_NONCE_MISMATCH
    real_compare = gpu_verify.hmac.compare_digest
    monkeypatch.setattr(gpu_verify.hmac, "compare_digest",
                        lambda a, b: True if len(a) == 32 and len(b) == 32 else real_compare(a, b))
    assert _real(nonce=bytes(32)).passed


# --- the nonce binding ------------------------------------------------------------------------

def test_the_gpu_nonce_is_the_one_derived_from_the_cpu_report_data() -> None:
    gpu = SimulatedGpu()
    report_data = bytes(range(64))
    evidence = gpu.evidence(gpu_nonce(report_data))
    rims = [gpu.rim("driver"), gpu.rim("vbios")]
    bound = appraise_gpu(evidence, nonce=gpu_nonce(report_data), rims=rims, policy=ALLOW_SIM, now=PINNED)
    assert bound.passed
    other = gpu_nonce(bytes(64))
    assert appraise_gpu(evidence, nonce=other, rims=rims, policy=ALLOW_SIM,
                        now=PINNED).code == Code.GPU_NONCE_MISMATCH


# --- simulated evidence -----------------------------------------------------------------------

def test_simulated_evidence_round_trips_as_software_only() -> None:
    gpu = SimulatedGpu()
    nonce = bytes(range(32))
    verdict = appraise_gpu(gpu.evidence(nonce), nonce=nonce, rims=[gpu.rim("driver"), gpu.rim("vbios")],
                           policy=ALLOW_SIM, now=PINNED)
    assert verdict.passed and verdict.assurance == "software-only"
    assert verdict.claims["measurements_matched"] == "63"  # 64 less NVDEC0's (index 35), reported disabled


def test_simulated_evidence_is_refused_without_allow_simulated() -> None:
    gpu = SimulatedGpu()
    nonce = bytes(range(32))
    verdict = appraise_gpu(gpu.evidence(nonce), nonce=nonce, rims=[gpu.rim("driver"), gpu.rim("vbios")],
                           now=PINNED)
    assert verdict.code == Code.SIMULATED_NOT_ALLOWED and verdict.assurance == "none"


def test_simulated_evidence_relabelled_as_real_does_not_reach_the_nvidia_root() -> None:
    gpu = SimulatedGpu()
    nonce = bytes(range(32))
    doc = json.loads(gpu.evidence(nonce))
    doc["simulated"] = False
    verdict = appraise_gpu(json.dumps(doc).encode(), nonce=nonce, rims=[gpu.rim("driver"), gpu.rim("vbios")],
                           policy=ALLOW_SIM, now=PINNED)
    assert verdict.code == Code.GPU_CHAIN_INVALID


def test_simulated_evidence_with_real_nvidia_rims_is_refused_at_the_rim_chain() -> None:
    gpu = SimulatedGpu()
    nonce = bytes(range(32))
    verdict = appraise_gpu(gpu.evidence(nonce), nonce=nonce, rims=gpu_samples.rims(), policy=ALLOW_SIM,
                           now=PINNED)
    assert verdict.code == Code.GPU_RIM_CHAIN_INVALID


def test_pinned_simulator_roots_refuse_another_simulator() -> None:
    gpu, other = SimulatedGpu(), SimulatedGpu()
    nonce = bytes(range(32))
    pinned = GpuPolicy(allow_simulated=True, simulator_roots=frozenset({fingerprint(gpu.root),
                                                                        fingerprint(gpu.rim_root)}))
    rims = [gpu.rim("driver"), gpu.rim("vbios")]
    assert appraise_gpu(gpu.evidence(nonce), nonce=nonce, rims=rims, policy=pinned, now=PINNED).passed
    verdict = appraise_gpu(other.evidence(nonce), nonce=nonce, rims=rims, policy=pinned, now=PINNED)
    assert verdict.code == Code.GPU_CHAIN_INVALID


# --- revocation: stapled OCSP -----------------------------------------------------------------

STAPLED = GpuPolicy(allow_simulated=True, revocation="ocsp-stapled")


def _sim(gpu: SimulatedGpu, ocsp_blobs: tuple[bytes, ...], now: datetime = SIM_AT) -> GpuVerdict:
    nonce = bytes(range(32))
    return appraise_gpu(gpu.evidence(nonce, ocsp=ocsp_blobs), nonce=nonce,
                        rims=[gpu.rim("driver"), gpu.rim("vbios")], policy=STAPLED, now=now)


def test_stapled_good_ocsp_responses_are_checked_and_said() -> None:
    gpu = SimulatedGpu()
    verdict = _sim(gpu, gpu.ocsp_responses())
    assert verdict.passed and verdict.revocation == "ocsp-good"
    assert "revocation:ocsp-good" in verdict.checks


def test_a_revoked_certificate_fails() -> None:
    gpu = SimulatedGpu()
    assert _sim(gpu, gpu.ocsp_responses(status=ocsp.OCSPCertStatus.REVOKED)).code == Code.GPU_CERT_REVOKED


def test_missing_or_stale_ocsp_responses_fail_when_the_policy_asks_for_them() -> None:
    gpu = SimulatedGpu()
    assert _sim(gpu, ()).code == Code.GPU_OCSP_INVALID
    assert _sim(gpu, gpu.ocsp_responses(), now=SIM_AT + timedelta(days=30)).code == Code.GPU_OCSP_INVALID
    assert _real(policy=GpuPolicy(revocation="ocsp-stapled")).code == Code.GPU_OCSP_INVALID


def _forged_good_response(gpu: SimulatedGpu) -> tuple[bytes, x509.Certificate]:
    """A GOOD response for the attestation key, signed by a key that only names the issuer."""
    forger = ec.generate_private_key(ec.SECP384R1())
    lookalike = (x509.CertificateBuilder().subject_name(gpu.root.subject).issuer_name(gpu.root.subject)
                 .public_key(forger.public_key()).serial_number(7)
                 .not_valid_before(SIM_AT - timedelta(days=1)).not_valid_after(SIM_AT + timedelta(days=1))
                 .sign(forger, hashes.SHA384()))
    forged = ocsp.OCSPResponseBuilder().add_response(
        cert=gpu.leaf, issuer=gpu.root, algorithm=hashes.SHA384(), cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=SIM_AT - timedelta(hours=1), next_update=SIM_AT + timedelta(days=1),
        revocation_time=None, revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.NAME, lookalike).sign(forger, hashes.SHA384())
    return forged.public_bytes(Encoding.DER), lookalike


def test_an_ocsp_response_not_signed_by_the_issuer_fails() -> None:
    gpu = SimulatedGpu()
    forged, _ = _forged_good_response(gpu)
    verdict = _sim(gpu, (forged, gpu.ocsp_responses()[1]))
    assert verdict.code == Code.GPU_OCSP_INVALID and "signature" in verdict.message


def test_a_verifier_that_trusts_whoever_signed_the_response_takes_a_forged_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = SimulatedGpu()
    forged, lookalike = _forged_good_response(gpu)
    stapled = (forged, gpu.ocsp_responses()[1])
    assert _sim(gpu, stapled).code == Code.GPU_OCSP_INVALID
    real_responder = certchain._responder

    def named_responder(resp: ocsp.OCSPResponse, issuer: x509.Certificate, what: str) -> x509.Certificate:
        forged_one = resp.serial_number == gpu.leaf.serial_number
        return lookalike if forged_one else real_responder(resp, issuer, what)

    monkeypatch.setattr(certchain, "_responder", named_responder)
    assert _sim(gpu, stapled).passed
