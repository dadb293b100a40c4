"""Pod appraisal with real simulated evidence and the real cmcp_core verifier: the operator
accepts only a guest of a signed release, running the initdata it rendered into that pod, for an
accepted revision, bound to our nonce."""

from __future__ import annotations

import json
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.attestation import Evidence
from cmcp_core.binding import Binding
from cmcp_core.crypto import key_from_jwk, public_bytes, public_jwk, thumbprint
from cmcp_core.digest import tagged_sha256
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.initdata import CmcpEntry, parse, render, tdx_mrconfigid
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify import appraise as core_appraise
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_appraisal, dev_release
from cmcp_enclave.simulated import SimulatedGuest
from cmcp_operator.pod_appraisal import (
    AppraisalSettings,
    allowed_tee,
    appraise_pod,
    camel,
)
from cmcp_operator.verifier import core_verifier

H1, H2 = "sha256:" + "11" * 32, "sha256:" + "22" * 32
CAT = "sha256:" + "33" * 32
SETTINGS = AppraisalSettings(allowed_tee=("tdx", "simulated"), policy=dev_appraisal())
# A launcher that boots another guest kernel/boot chain with the genuine initdata.
FORGED = SimulatedGuest(rtmrs=(*SimulatedGuest().rtmrs[:2], b"\x66" * 48))


def initdata(bundle_hash: str, route: str = "ns/r", image: str = TEST_IMAGE) -> bytes:
    return render(CmcpEntry(bundle_hash, CAT, "enforce", route, "http://up/mcp"), image=image,
                  command=["cmcp-enclave"])


def evidence(toml: bytes, nonce: bytes, *, claim: str | None = None,
             measured: bytes | None = None, guest: SimulatedGuest | None = None) -> Evidence:
    entry = parse(toml).cmcp
    key = Ed25519PrivateKey.generate().public_key()
    bundle_hash = claim or entry.bundle_hash
    rd = Binding(public_bytes(key), bundle_hash, entry.catalog_hash, entry.enforcement_mode,
                 nonce).report_data()
    guest = guest or SimulatedGuest()
    quote = SimulatedQuoteSigner().quote(rd, tdx_mrconfigid(measured if measured is not None else toml),
                                         mrtd=guest.mrtd, rtmrs=(*guest.rtmrs, b"\0" * 48))
    return Evidence("simulated", quote, b"", toml, json.dumps(public_jwk(key)), bundle_hash,
                    entry.catalog_hash, entry.enforcement_mode, rd)


def appraise(ev: Evidence, nonce: bytes, pod_initdata: bytes | None, accepted: dict[str, str],
             settings: AppraisalSettings = SETTINGS):  # type: ignore[no-untyped-def]
    return appraise_pod(ev, nonce=nonce, pod_initdata=pod_initdata, route="ns/r", accepted=accepted,
                        settings=settings, verifier=core_verifier())


def test_good_pod_is_attested_with_key_thumbprint() -> None:
    toml, nonce = initdata(H1), secrets.token_bytes(32)
    ev = evidence(toml, nonce)
    v = appraise(ev, nonce, toml, {tagged_sha256(toml): H1})
    assert v.attested, v
    assert v.reason == "Attested" and v.bundle_hash == H1
    assert v.thumbprint == thumbprint(key_from_jwk(json.loads(ev.public_key_jwk)))


def test_other_bundle_hash_is_rejected_by_name() -> None:
    rogue, nonce = initdata(H2), secrets.token_bytes(32)
    v = appraise(evidence(rogue, nonce), nonce, rogue, {tagged_sha256(initdata(H1)): H1})
    assert not v.attested and v.reason == "BundleHashMismatch"


def test_enclave_must_report_the_pods_own_annotation() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    ev = evidence(ours, nonce)
    v = appraise(ev, nonce, initdata(H1, route="ns/other"), {tagged_sha256(ours): H1})
    assert not v.attested and v.reason == "InitdataMismatch"
    assert appraise(ev, nonce, None, {tagged_sha256(ours): H1}).reason == "InitdataAnnotationMissing"


def test_forged_initdata_fails_measurement() -> None:
    """Claims our initdata but the TEE measured something else."""
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    ev = evidence(ours, nonce, measured=initdata(H2))
    v = appraise(ev, nonce, ours, {tagged_sha256(ours): H1})
    assert not v.attested and v.reason == camel("INITDATA_MISMATCH")


def test_stale_nonce_fails_binding() -> None:
    ours = initdata(H1)
    ev = evidence(ours, secrets.token_bytes(32))
    v = appraise(ev, secrets.token_bytes(32), ours, {tagged_sha256(ours): H1})
    assert not v.attested and v.reason.startswith("Binding")


def test_simulated_refused_unless_allowed_and_missing_verifier_fails_closed() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    ev = evidence(ours, nonce)
    strict = AppraisalSettings(allowed_tee=("tdx",), policy=dev_appraisal())
    assert not appraise(ev, nonce, ours, {tagged_sha256(ours): H1}, strict).attested
    v = appraise_pod(ev, nonce=nonce, pod_initdata=ours, route="ns/r", accepted={tagged_sha256(ours): H1},
                     settings=SETTINGS, verifier=None)
    assert not v.attested and v.reason == "VerifierUnavailable"


def test_previous_revision_accepted_only_when_listed() -> None:
    old, new, nonce = initdata(H1), initdata(H2), secrets.token_bytes(32)
    ev = evidence(old, nonce)
    both = {tagged_sha256(old): H1, tagged_sha256(new): H2}
    assert appraise(ev, nonce, old, both).attested
    assert not appraise(ev, nonce, old, {tagged_sha256(new): H2}).attested


@pytest.mark.parametrize(("tee", "allow", "expected"), [
    ("tdx", False, ("tdx",)),
    ("tdx", True, ("tdx", "simulated")),  # a stand-in TDX node's quotes
    ("snp", False, ("snp",)),
    ("snp", True, ("snp", "simulated", "simulated-snp")),  # and an SNP node stand-in's reports
    ("any", False, ("tdx", "snp", "coco-aa")),
    ("any", True, ("tdx", "snp", "coco-aa", "simulated", "simulated-snp")),
    ("simulated", True, ("simulated",)),
    ("simulated", False, ()),  # a simulated route without --allow-simulated admits nothing
])
def test_allowed_tee(tee: str, allow: bool, expected: tuple[str, ...]) -> None:
    assert allowed_tee(tee, allow_simulated=allow) == expected


def test_a_forged_guest_is_not_attested(monkeypatch: pytest.MonkeyPatch) -> None:
    """The genuine initdata, bundle and key binding, in a guest booted with another RTMR2."""
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    ev = evidence(ours, nonce, guest=FORGED)
    v = appraise(ev, nonce, ours, {tagged_sha256(ours): H1})
    assert not v.attested and v.reason == "ReferenceValueMismatch" and "RTMR2" in v.message
    # Weakened: without the release comparison the forged guest passes every other check.
    monkeypatch.setattr(core_appraise, "match_release", lambda *_args: dev_release())
    assert appraise(ev, nonce, ours, {tagged_sha256(ours): H1}).attested


def test_a_pod_of_an_image_no_release_names_is_not_attested() -> None:
    other = "ghcr.io/attacker/enclave@sha256:" + "9" * 64
    ours, nonce = initdata(H1, image=other), secrets.token_bytes(32)
    v = appraise(evidence(ours, nonce), nonce, ours, {tagged_sha256(ours): H1})
    assert not v.attested and v.reason == "ReferenceValueMismatch" and "image" in v.message


def test_without_a_release_every_pod_is_refused() -> None:
    ours, nonce = initdata(H1), secrets.token_bytes(32)
    bare = AppraisalSettings(allowed_tee=("simulated",), policy=AppraisalPolicy(allow_simulated=True))
    v = appraise(evidence(ours, nonce), nonce, ours, {tagged_sha256(ours): H1}, bare)
    assert not v.attested and v.reason == "ReferenceValuesMissing"
