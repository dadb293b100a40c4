"""ATTEST-001..007: the evidence binds what it must, is fresh, is not forgeable, names the key
that actually signs decisions, a guest that is not a signed release is refused, and GPU evidence
answers the very attestation it comes with."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
from dataclasses import replace
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance.agent import agent
from cmcp_conformance.local import FORGED_GUEST
from cmcp_conformance.suite.conftest import Attested, appraisal_policy, attest, need_enclave
from cmcp_conformance.suite.sessions import run_session, standard_calls
from cmcp_conformance.target import TargetDeployment
from cmcp_core.binding import Binding, gpu_nonce
from cmcp_core.crypto import public_bytes, public_jwk, thumbprint
from cmcp_core.decision import verify_decision
from cmcp_core.errors import CmcpError
from cmcp_core.evidence.gpu import decode_gpu_evidence, parse_gpu_report
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.trust_record import gpu_evidence_digest, record_gpu_digests, record_report_data
from cmcp_core.verify import appraise_response
from cmcp_core.verify.appraise import SIMULATED_PLATFORMS
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_core.verify.record import verify_trust_record

TDX_LIKE = ("tdx", "simulated")


def _report_data_in_evidence(att: Attested) -> bytes:
    if att.response.platform not in TDX_LIKE:
        pytest.skip(
            f"independent REPORTDATA extraction is implemented for TDX-layout evidence, "
            f"not {att.response.platform}"
        )
    return parse_quote(bytes(att.response.evidence)).body.report_data


@pytest.mark.conformance("ATTEST-001")
def test_report_data_binds_key_bundle_catalog_mode_and_nonce(
    target: TargetDeployment, attested: Attested
) -> None:
    resp = attested.response
    expected = Binding(
        public_bytes(attested.key), resp.bundle_hash, resp.catalog_hash, resp.enforcement_mode, attested.nonce
    ).report_data()
    assert _report_data_in_evidence(attested) == expected, (
        "REPORTDATA in the quote is not SHA-512(JCS(domain, key, bundle, catalog, mode, our nonce))"
    )
    if target.expected_bundle_hash:
        assert resp.bundle_hash == target.expected_bundle_hash


@pytest.mark.conformance("ATTEST-001")
def test_evidence_does_not_vouch_for_another_key_or_bundle(
    target: TargetDeployment, attested: Attested
) -> None:
    resp, policy = attested.response, appraisal_policy(target)
    other = public_jwk(Ed25519PrivateKey.generate().public_key())
    wrong_key = appraise_response(resp, attested.nonce, policy, expected_public_key_jwk=other)
    assert not wrong_key.passed, "evidence appraised as binding a key it does not bind"
    wrong_bundle = appraise_response(resp, attested.nonce, policy, expected_bundle_hash="sha256:" + "ab" * 32)
    assert not wrong_bundle.passed, "evidence appraised as binding a bundle it does not bind"
    # the enclave's own claim swapped for another key must not survive either
    resp.public_key_jwk = json.dumps(other)
    swapped = appraise_response(resp, attested.nonce, policy)
    assert not swapped.passed, "evidence accepted with a substituted public key"


@pytest.mark.conformance("ATTEST-002")
def test_each_nonce_gets_its_own_evidence(target: TargetDeployment) -> None:
    first, second = attest(target), attest(target)
    assert first.nonce != second.nonce
    assert bytes(first.response.report_data) != bytes(second.response.report_data), (
        "two nonces produced the same REPORT_DATA: evidence is not fresh"
    )
    replayed = appraise_response(first.response, second.nonce, appraisal_policy(target))
    assert not replayed.passed, "evidence for one nonce appraised under another (replayable evidence)"


@pytest.mark.conformance("ATTEST-002")
def test_unusable_nonce_is_refused(target: TargetDeployment) -> None:
    need_enclave(target)
    for nonce in (b"", b"short"):
        try:
            resp = target.attest(nonce)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (
                f"nonce of {len(nonce)} bytes: unexpected status {exc.code()}"
            )
            continue
        verdict = appraise_response(resp, nonce, appraisal_policy(target))
        assert not verdict.passed, f"evidence for a {len(nonce)}-byte nonce was produced and accepted"


@pytest.mark.conformance("ATTEST-003")
def test_simulated_evidence_needs_explicit_consent(target: TargetDeployment, attested: Attested) -> None:
    strict_policy = replace(appraisal_policy(target), allow_simulated=False)
    strict = appraise_response(attested.response, attested.nonce, strict_policy)
    if attested.response.platform in SIMULATED_PLATFORMS:
        assert target.allow_simulated, "the target presents simulated evidence but was not declared simulated"
        assert not strict.passed and strict.code == "SIMULATED_NOT_ALLOWED", (
            f"simulated evidence passed a strict verifier: {strict.code}"
        )
        assert attested.verdict.assurance == "software-only", (
            f"simulated evidence reported as {attested.verdict.assurance!r}"
        )
    else:
        assert strict.passed and strict.assurance == "hardware", (
            f"{attested.response.platform} evidence: {strict.code} / {strict.assurance}"
        )


@pytest.mark.conformance("ATTEST-004")
def test_flipped_bytes_in_evidence_are_rejected(target: TargetDeployment, attested: Attested) -> None:
    evidence = bytes(attested.response.evidence)
    report_data = bytes(attested.response.report_data) or _report_data_in_evidence(attested)
    offsets = {"header": 8, "report_data": evidence.find(report_data)}
    if attested.response.platform in TDX_LIKE:
        quote = parse_quote(evidence)
        offsets["mrconfigid"] = evidence.find(quote.body.mrconfigid)
        offsets["mrtd"] = evidence.find(quote.body.mrtd)
        offsets["signed-region-end"] = len(quote.signed_bytes) - 1
    offsets.update({f"random-{i}": secrets.randbelow(len(evidence)) for i in range(4)})
    policy = appraisal_policy(target)
    for name, offset in offsets.items():
        assert offset >= 0, f"could not locate {name} in the evidence"
        tampered = bytearray(evidence)
        tampered[offset] ^= 0x01
        attested.response.evidence = bytes(tampered)
        verdict = appraise_response(attested.response, attested.nonce, policy)
        assert not verdict.passed, f"evidence with byte {offset} ({name}) flipped still appraised"
    attested.response.evidence = evidence
    assert appraise_response(attested.response, attested.nonce, policy).passed


@pytest.mark.conformance("ATTEST-005")
def test_decisions_are_signed_by_the_attested_key(target: TargetDeployment, attested: Attested) -> None:
    async def scenario() -> tuple[bytes, bytes, str]:
        async with agent(target) as a:
            out = await a.call(target.profile.denied_tool, {"text": "x"})
            assert not out.ok, f"forbidden tool was allowed: {out.describe()}"
            doc, sig = out.signed_decision()
            return doc, sig, a.session_id

    doc, sig, session_id = asyncio.run(scenario())
    decision = verify_decision(
        doc,
        sig,
        attested.key,
        expected={
            "tool": target.profile.denied_tool,
            "session_id": session_id,
            "bundle_hash": attested.response.bundle_hash,
        },
    )
    assert decision["kid"] == attested.kid
    with pytest.raises(CmcpError):
        verify_decision(doc, sig, Ed25519PrivateKey.generate().public_key())


@pytest.mark.conformance("ATTEST-005")
def test_route_status_matches_fresh_evidence(target: TargetDeployment) -> None:
    if target.route_status is None:
        pytest.skip("no McpRoute status to compare (local target or no --route)")
    status = target.route_status.get("status") or {}
    pods = [p for p in status.get("pods") or [] if p.get("attested")]
    assert pods, "the route status lists no attested enclave"
    for pod in pods:
        assert pod.get("reportedBundleHash") == status.get("bundleHash"), (
            f"pod {pod.get('pod')} is attested with another bundle than the route expects"
        )
    if target.enclave_address:
        att = attest(target)
        listed = {p.get("keyThumbprint") for p in pods}
        assert att.kid in listed, "the enclave's fresh key is not the one the operator attested"
        assert thumbprint(att.key) == att.verdict.key_thumbprint


def _forged_guest_evidence(target: TargetDeployment, attested: Attested) -> tuple[Any, bytes]:
    """Fresh evidence from a guest the host booted itself, with the genuine bundle and initdata.

    With local powers a real enclave process is launched as :data:`FORGED_GUEST`; on a remote
    simulated target the suite is that host and signs the simulated quote itself; hardware evidence
    from another guest cannot be made without the target's own hosts."""
    if target.powers is not None:
        with target.powers.forged_enclave() as address:
            nonce = secrets.token_bytes(32)
            return target.attest(nonce, address=address), nonce
    if attested.response.platform != "simulated":
        pytest.skip("needs local powers (boot an enclave as another guest) on a hardware target")
    response = copy.deepcopy(attested.response)
    quote = parse_quote(bytes(response.evidence))
    response.evidence = SimulatedQuoteSigner().quote(
        quote.body.report_data, quote.body.mrconfigid, mrtd=FORGED_GUEST.mrtd,
        rtmrs=(*FORGED_GUEST.rtmrs, bytes(48)))
    return response, attested.nonce


@pytest.mark.conformance("ATTEST-006")
def test_forged_guest_is_refused(target: TargetDeployment, attested: Attested) -> None:
    """A host boots its own guest (another initrd) with the genuine bundle and initdata."""
    forged, nonce = _forged_guest_evidence(target, attested)
    assert bytes(forged.initdata) == bytes(attested.response.initdata), (
        "the forged guest must carry the genuine initdata, or the test proves nothing"
    )
    verdict = appraise_response(forged, nonce, appraisal_policy(target),
                                expected_bundle_hash=target.expected_bundle_hash)
    assert not verdict.passed, "a guest whose launch measurements match no signed release appraised"
    assert verdict.code == "REFERENCE_VALUE_MISMATCH", f"refused for another reason: {verdict.code}"


def _need_gpu(target: TargetDeployment) -> GpuRequirement:
    if target.gpu is None:
        pytest.skip("target requires no GPU (pass --require-gpu N, or --route for its status.gpu)")
    return target.gpu


def _with_gpu_evidence(response: Any, envelopes: list[bytes]) -> Any:
    out = copy.deepcopy(response)
    del out.gpu_evidence[:]
    out.gpu_evidence.extend(envelopes)
    return out


@pytest.mark.conformance("ATTEST-007")
def test_gpu_evidence_answers_this_attestation(target: TargetDeployment, attested: Attested) -> None:
    """Re-derived here, not taken from the verifier: each GPU report's SPDM request carries the nonce
    derived from the REPORT_DATA the CPU evidence binds to our nonce."""
    gpu = _need_gpu(target)
    resp = attested.response
    envelopes = [bytes(e) for e in resp.gpu_evidence]
    assert len(envelopes) >= gpu.count, f"{len(envelopes)} GPU envelope(s); the target requires {gpu.count}"
    report_data = Binding(public_bytes(attested.key), resp.bundle_hash, resp.catalog_hash,
                          resp.enforcement_mode, attested.nonce).report_data()
    for envelope in envelopes:
        report = parse_gpu_report(decode_gpu_evidence(envelope).report)
        assert report.request.nonce == gpu_nonce(report_data), "a GPU report answers another nonce"
    verdict = appraise_response(resp, attested.nonce, appraisal_policy(target), gpu=gpu)
    assert verdict.passed, f"CPU and GPU evidence do not appraise together: {verdict.code} {verdict.message}"
    assert len(verdict.gpus) == len(envelopes) and all(g.passed for g in verdict.gpus)
    if any(decode_gpu_evidence(e).simulated for e in envelopes):
        strict = replace(appraisal_policy(target), allow_simulated=False)
        assert appraise_response(resp, attested.nonce, strict, gpu=gpu).code == "SIMULATED_NOT_ALLOWED"


@pytest.mark.conformance("ATTEST-007")
def test_gpu_evidence_of_another_attestation_or_none_fails_the_whole_attestation(
    target: TargetDeployment,
) -> None:
    gpu = _need_gpu(target)
    first, second = attest(target), attest(target)
    policy = appraisal_policy(target)
    replayed = _with_gpu_evidence(second.response, [bytes(e) for e in first.response.gpu_evidence])
    verdict = appraise_response(replayed, second.nonce, policy, gpu=gpu)
    assert not verdict.passed and verdict.code == "GPU_NONCE_MISMATCH", (
        f"GPU evidence of another attestation appraised: {verdict.code}")
    stripped = appraise_response(_with_gpu_evidence(second.response, []), second.nonce, policy, gpu=gpu)
    assert not stripped.passed and stripped.code == "GPU_EVIDENCE_MISSING", (
        f"an attestation without GPU evidence appraised for a GPU target: {stripped.code}")


@pytest.mark.conformance("ATTEST-007")
def test_a_trust_record_names_gpu_evidence_for_its_own_nonce(
    target: TargetDeployment, attested: Attested
) -> None:
    """The record of a session names, by digest, GPU evidence answering the nonce the suite derives
    itself from the record's REPORT_DATA; it verifies with the record, another Attest's does not."""
    gpu = _need_gpu(target)
    session = run_session(target, standard_calls(target))
    record, envelopes = session.record, list(session.gpu_evidence)
    assert len(envelopes) >= gpu.count, f"the record came with {len(envelopes)} GPU envelope(s)"
    assert sorted(gpu_evidence_digest(e) for e in envelopes) == sorted(record_gpu_digests(record)), (
        "the GPU evidence returned is not what the signed record names")
    resp = attested.response
    report_data = record_report_data(public_bytes(attested.key), resp.bundle_hash, resp.catalog_hash,
                                     resp.enforcement_mode, record["tool_transcript"]["hash"])
    for envelope in envelopes:
        report = parse_gpu_report(decode_gpu_evidence(envelope).report)
        assert report.request.nonce == gpu_nonce(report_data), "a record's GPU report answers another nonce"
    allow = appraisal_policy(target).allow_simulated

    def check(evidence: list[bytes] | None) -> Any:
        return verify_trust_record(record, verdict=attested.verdict, gpu_evidence=evidence, gpu=gpu,
                                   allow_simulated=allow)

    verdict = check(envelopes)
    assert verdict.passed, f"the record with its GPU evidence: {verdict.code} {verdict.message}"
    swapped = check([bytes(e) for e in resp.gpu_evidence]).code
    assert swapped == "GPU_EVIDENCE_UNREFERENCED", f"an Attest's GPU evidence passed for a record: {swapped}"
    missing = check(None).code
    assert missing == "GPU_EVIDENCE_MISSING", f"a record without its required GPU evidence: {missing}"
