"""The operator's verifier adapter (:mod:`cmcp_operator.verifier`): real simulated evidence
through the real :mod:`cmcp_core.verify`, limited to the platforms the route allows."""

from __future__ import annotations

import dataclasses
import secrets

from cmcp_devkit.release import dev_appraisal
from cmcp_operator.pod_appraisal import AppraisalSettings
from cmcp_operator.verifier import core_verifier, load_verifier
from tests.unit.cmcp_operator.test_pod_appraisal import H1, H2, SETTINGS, evidence, initdata


def test_the_verifier_compares_the_whole_rendered_initdata() -> None:
    """Defence in depth: even if the operator's own byte comparison were lost, the verifier is
    handed the pod's rendered initdata and refuses an enclave reporting another document."""
    ours, other, nonce = initdata(H1), initdata(H1, route="ns/other"), secrets.token_bytes(32)
    ev = evidence(other, nonce)
    verdict = core_verifier()(ev, nonce=nonce, settings=SETTINGS, expected_bundle_hash=H1,
                              expected_initdata=ours)
    assert not verdict.ok and verdict.code == "INITDATA_MISMATCH"
    assert core_verifier()(ev, nonce=nonce, settings=SETTINGS, expected_bundle_hash=H1,
                           expected_initdata=other).ok


def test_a_genuine_guest_passes_with_its_bundle_and_the_checks_named() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    verdict = load_verifier()(evidence(ours, nonce), nonce=nonce, settings=SETTINGS, expected_bundle_hash=H1,
                              expected_initdata=ours)
    assert verdict.ok and verdict.code == "OK" and verdict.bundle_hash == H1
    assert verdict.platform == "simulated"
    assert {"initdata-measurement", "report-data-binding"} <= set(verdict.checks)


def test_a_platform_the_route_does_not_allow_is_refused_before_appraisal() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    tdx_only = AppraisalSettings(allowed_tee=("tdx", "snp"), policy=dev_appraisal())
    verdict = core_verifier()(evidence(ours, nonce), nonce=nonce, settings=tdx_only, expected_bundle_hash=H1,
                              expected_initdata=ours)
    assert not verdict.ok and verdict.code == "EVIDENCE_UNSUPPORTED" and verdict.assurance == "none"
    assert "'simulated' is not allowed for this route (tdx, snp)" in verdict.message


def test_route_allowing_simulated_does_not_override_the_operator() -> None:
    """A route may list ``simulated``, but without --allow-simulated the policy still refuses it."""
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    strict = AppraisalSettings(allowed_tee=("simulated",),
                               policy=dataclasses.replace(dev_appraisal(), allow_simulated=False))
    verdict = core_verifier()(evidence(ours, nonce), nonce=nonce, settings=strict, expected_bundle_hash=H1,
                              expected_initdata=ours)
    assert not verdict.ok and verdict.code == "SIMULATED_NOT_ALLOWED"


def test_route_platforms_never_widen_the_operators_platforms() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    narrowed = dataclasses.replace(dev_appraisal(), accepted_platforms=frozenset({"tdx"}))
    settings = AppraisalSettings(allowed_tee=("simulated",), policy=narrowed)
    verdict = core_verifier()(evidence(ours, nonce), nonce=nonce, settings=settings, expected_bundle_hash=H1,
                              expected_initdata=ours)
    assert not verdict.ok


def test_wrong_bundle_or_stale_nonce_fail_with_their_codes() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    ev = evidence(ours, nonce)
    other_bundle = core_verifier()(ev, nonce=nonce, settings=SETTINGS, expected_bundle_hash=H2,
                                   expected_initdata=ours)
    assert not other_bundle.ok and other_bundle.code == "ATTESTED_BUNDLE_UNEXPECTED"
    replayed = core_verifier()(ev, nonce=secrets.token_bytes(32), settings=SETTINGS, expected_bundle_hash=H1,
                               expected_initdata=ours)
    assert not replayed.ok and replayed.code == "BINDING_REPORT_DATA_MISMATCH"


def test_the_operators_policy_object_is_not_modified() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    settings = AppraisalSettings(allowed_tee=("simulated",), policy=dev_appraisal())
    before = settings.policy
    core_verifier()(evidence(ours, nonce), nonce=nonce, settings=settings, expected_bundle_hash=H1,
                    expected_initdata=ours)
    assert settings.policy is before
    assert before.accepted_platforms == frozenset({"tdx", "snp", "simulated", "simulated-snp"})
