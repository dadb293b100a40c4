"""Binding and initdata checks through the one appraisal entry point, on simulated quotes.

Each attack changes exactly one thing and must fail with its own code; the honest case
must pass (so the failures are caused by the change, not by a broken setup).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import initdata
from cmcp_core.binding import Binding
from cmcp_core.crypto import public_bytes, public_jwk, thumbprint
from cmcp_core.errors import Code
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.proto import enclave_pb2
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_attestation, appraise_response
from cmcp_core.verify.bindings import check_initdata
from cmcp_core.verify.verdict import VerifyFailure
from cmcp_devkit.release import dev_appraisal, dev_release

BUNDLE = "sha256:" + "ab" * 32
CATALOG = "sha256:" + "cd" * 32
IMAGE = "registry.example/cmcp-enclave@sha256:" + "0" * 64
ALLOW_SIM = dev_appraisal(IMAGE)


def _initdata(algorithm: str = "sha384", bundle: str = BUNDLE) -> bytes:
    entry = initdata.CmcpEntry(bundle, CATALOG, "enforce", "team/route", "https://upstream.example")
    return initdata.render(
        entry,
        image=IMAGE,
        command=["cmcp-enclave"],
        algorithm=algorithm,
    )


@dataclass
class Sim:
    """An honest simulated enclave; ``quote()`` overrides let a test lie about one field."""

    algorithm: str = "sha384"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    signer: SimulatedQuoteSigner = field(default_factory=SimulatedQuoteSigner)
    nonce: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def initdata(self) -> bytes:
        return _initdata(self.algorithm)

    def quote(
        self,
        *,
        nonce: bytes | None = None,
        key: bytes | None = None,
        bundle: str = BUNDLE,
        catalog: str = CATALOG,
        mode: str = "enforce",
        mrconfigid: bytes | None = None,
    ) -> bytes:
        rd = Binding(
            key or public_bytes(self.key.public_key()), bundle, catalog, mode, nonce or self.nonce
        ).report_data()
        cfg = mrconfigid if mrconfigid is not None else initdata.tdx_mrconfigid(self.initdata)
        return self.signer.quote(rd, cfg)

    def appraise(self, evidence: bytes, **kw: Any) -> Verdict:
        args: dict[str, Any] = {
            "initdata": self.initdata,
            "public_key_jwk": public_jwk(self.key.public_key()),
            "bundle_hash": BUNDLE,
            "catalog_hash": CATALOG,
            "enforcement_mode": "enforce",
            "nonce": self.nonce,
            "policy": ALLOW_SIM,
        }
        args.update(kw)
        return appraise_attestation(
            kw.pop("platform", "simulated"), evidence, **{k: v for k, v in args.items() if k != "platform"}
        )


@pytest.fixture
def sim() -> Sim:
    return Sim()


def test_honest_simulated_enclave_passes_software_only(sim: Sim) -> None:
    v = sim.appraise(sim.quote())
    assert v.passed and v.code == "OK", v.message
    assert v.assurance == "software-only" and v.platform == "simulated"
    assert v.key_thumbprint == thumbprint(sim.key.public_key())
    assert v.public_key_jwk == public_jwk(sim.key.public_key())
    assert (v.bundle_hash, v.catalog_hash, v.mode) == (BUNDLE, CATALOG, "enforce")
    assert v.checks[-1] == "report-data-binding"


def test_simulated_needs_explicit_permission(sim: Sim) -> None:
    v = sim.appraise(sim.quote(), policy=AppraisalPolicy())
    assert not v.passed and v.code == Code.SIMULATED_NOT_ALLOWED and v.assurance == "none"
    assert v.public_key_jwk is None and v.key_thumbprint is None


def test_simulated_quote_cannot_pose_as_tdx(sim: Sim) -> None:
    v = sim.appraise(sim.quote(), platform="tdx", collateral="{}")
    assert not v.passed and v.assurance == "none"


def test_wrong_nonce(sim: Sim) -> None:
    replayed = sim.quote(nonce=os.urandom(32))
    v = sim.appraise(replayed)
    assert not v.passed and v.code == Code.BINDING_REPORT_DATA_MISMATCH
    pinned = sim.appraise(replayed, expected_public_key_jwk=public_jwk(sim.key.public_key()))
    assert not pinned.passed and pinned.code == Code.BINDING_NONCE_MISMATCH


def test_wrong_key(sim: Sim) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    # the host swaps the claimed key while forwarding genuine evidence
    v = sim.appraise(sim.quote(), public_key_jwk=public_jwk(other))
    assert not v.passed and v.code == Code.BINDING_REPORT_DATA_MISMATCH
    pinned = sim.appraise(
        sim.quote(),
        public_key_jwk=public_jwk(other),
        expected_public_key_jwk=public_jwk(sim.key.public_key()),
    )
    assert not pinned.passed and pinned.code == Code.BINDING_KEY_MISMATCH
    # evidence bound to another key than the one claimed
    v = sim.appraise(sim.quote(key=public_bytes(other)))
    assert not v.passed and v.code == Code.BINDING_REPORT_DATA_MISMATCH


def test_wrong_bundle_catalog_mode(sim: Sim) -> None:
    other = "sha256:" + "ee" * 32
    v = sim.appraise(sim.quote(bundle=other), bundle_hash=other)
    assert not v.passed and v.code == Code.BINDING_BUNDLE_MISMATCH
    v = sim.appraise(sim.quote(catalog=other), catalog_hash=other)
    assert not v.passed and v.code == Code.BINDING_CATALOG_MISMATCH
    v = sim.appraise(sim.quote(mode="advisory"), enforcement_mode="advisory")
    assert not v.passed and v.code == Code.BINDING_MODE_MISMATCH
    v = sim.appraise(sim.quote(), expected_bundle_hash=other)
    assert not v.passed and v.code == Code.ATTESTED_BUNDLE_UNEXPECTED
    assert sim.appraise(sim.quote(), expected_bundle_hash=BUNDLE).passed


def test_claimed_report_data_must_be_the_evidence(sim: Sim) -> None:
    q = sim.quote()
    good = Binding(public_bytes(sim.key.public_key()), BUNDLE, CATALOG, "enforce", sim.nonce).report_data()
    assert sim.appraise(q, claimed_report_data=good).passed
    v = sim.appraise(q, claimed_report_data=bytes(64))
    assert not v.passed and v.code == Code.BINDING_REPORT_DATA_MISMATCH


def test_wrong_initdata(sim: Sim) -> None:
    v = sim.appraise(sim.quote(), initdata=_initdata(bundle="sha256:" + "99" * 32))
    assert not v.passed and v.code == Code.INITDATA_MISMATCH
    v = sim.appraise(sim.quote(), initdata=b"not toml [")
    assert not v.passed and v.code == Code.INITDATA_MISMATCH


def test_tdx_sha256_is_zero_padded_and_sha384_exact() -> None:
    s256 = Sim(algorithm="sha256")
    raw = s256.initdata
    padded = hashlib.sha256(raw).digest() + bytes(16)
    assert s256.appraise(s256.quote(mrconfigid=padded)).passed
    for wrong in (
        bytes(16) + hashlib.sha256(raw).digest(),  # padded on the wrong side
        hashlib.sha384(raw).digest(),
    ):  # the other algorithm than declared
        v = s256.appraise(s256.quote(mrconfigid=wrong))
        assert not v.passed and v.code == Code.INITDATA_MISMATCH
    s384 = Sim(algorithm="sha384")
    assert s384.appraise(s384.quote(mrconfigid=hashlib.sha384(s384.initdata).digest())).passed
    v = s384.appraise(s384.quote(mrconfigid=hashlib.sha256(s384.initdata).digest() + bytes(16)))
    assert not v.passed and v.code == Code.INITDATA_MISMATCH


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_snp_host_data_truncation(algorithm: str) -> None:
    raw = _initdata(algorithm)
    full = hashlib.new(algorithm, raw).digest()
    assert check_initdata(raw, "snp", full[:32]).cmcp.bundle_hash == BUNDLE
    wrongs = [full[:31] + bytes([full[31] ^ 1]), bytes(32)]
    if algorithm != "sha256":
        wrongs.append(full[-32:])  # truncation keeps the leading bytes, not the trailing ones
    for wrong in wrongs:
        with pytest.raises(VerifyFailure) as err:
            check_initdata(raw, "snp", wrong)
        assert err.value.code is Code.INITDATA_MISMATCH
    if algorithm != "sha256":
        with pytest.raises(VerifyFailure):
            check_initdata(raw, "snp", full)  # the untruncated digest is not HOST_DATA


def test_a_guest_with_other_launch_measurements_is_refused(sim: Sim) -> None:
    """The genuine initdata on another firmware (MRTD): only the release comparison can tell."""
    mrtd = os.urandom(48)
    q = sim.signer.quote(
        Binding(public_bytes(sim.key.public_key()), BUNDLE, CATALOG, "enforce", sim.nonce).report_data(),
        initdata.tdx_mrconfigid(sim.initdata),
        mrtd=mrtd,
    )
    v = sim.appraise(q)
    assert not v.passed and v.code == Code.REFERENCE_VALUE_MISMATCH and "MRTD" in v.message
    forged = dataclasses.replace(dev_release(IMAGE).simulated, mrtd=mrtd)  # type: ignore[arg-type]
    release = dataclasses.replace(dev_release(IMAGE), simulated=forged)
    assert sim.appraise(q, policy=AppraisalPolicy(allow_simulated=True, releases=(release,))).passed


def test_no_release_refuses_even_an_honest_guest(sim: Sim) -> None:
    v = sim.appraise(sim.quote(), policy=AppraisalPolicy(allow_simulated=True))
    assert not v.passed and v.code == Code.REFERENCE_VALUES_MISSING


@pytest.mark.parametrize(
    "override",
    [
        {"nonce": b"short"},
        {"public_key_jwk": {"kty": "RSA"}},
        {"public_key_jwk": "{not json"},
        {"bundle_hash": None},
        {"initdata": "text"},
        {"platform": "sgx"},
    ],
)
def test_bad_inputs_are_coded(sim: Sim, override: dict[str, Any]) -> None:
    v = sim.appraise(sim.quote(), **override)
    assert not v.passed and v.code in (Code.VERIFY_INPUT_INVALID, Code.EVIDENCE_UNSUPPORTED)


def test_appraise_response_from_proto(sim: Sim) -> None:
    rd = Binding(public_bytes(sim.key.public_key()), BUNDLE, CATALOG, "enforce", sim.nonce).report_data()
    resp = enclave_pb2.AttestResponse(
        platform="simulated",
        evidence=sim.quote(),
        initdata=sim.initdata,
        public_key_jwk=json.dumps(public_jwk(sim.key.public_key())),
        bundle_hash=BUNDLE,
        catalog_hash=CATALOG,
        enforcement_mode="enforce",
        report_data=rd,
    )
    assert appraise_response(
        resp, sim.nonce, ALLOW_SIM, expected_bundle_hash=BUNDLE, expected_initdata=sim.initdata
    ).passed
    v = appraise_response(resp, sim.nonce, ALLOW_SIM, expected_initdata=_initdata("sha256"))
    assert not v.passed and v.code == Code.INITDATA_MISMATCH
    assert appraise_response(object(), sim.nonce).code == Code.VERIFY_INPUT_INVALID
