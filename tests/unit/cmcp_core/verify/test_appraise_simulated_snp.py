"""Simulated SNP evidence through the one appraisal entry point.

Each attack changes one thing and must fail with its own code; the honest enclave passes as
``software-only`` (so the failures come from the change). A weakened appraiser that skips the
HOST_DATA comparison lets the wrong-initdata attack through: that is the hole the test catches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import initdata
from cmcp_core.binding import Binding
from cmcp_core.crypto import public_bytes, public_jwk
from cmcp_core.errors import Code
from cmcp_core.evidence.simulated_snp import (
    SIMULATED_SNP_MEASUREMENT,
    SIMULATED_SNP_POLICY,
    SimulatedReportSigner,
)
from cmcp_core.evidence.snp import POLICY_DEBUG
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_attestation, appraise_evidence, bindings
from cmcp_core.verify import appraise as appraise_mod
from cmcp_devkit.release import dev_appraisal, dev_release

BUNDLE = "sha256:" + "ab" * 32
CATALOG = "sha256:" + "cd" * 32
IMAGE = "registry.example/cmcp-enclave@sha256:" + "0" * 64
ALLOW_SIM = dev_appraisal(IMAGE)
PLATFORM = "simulated-snp"


def _initdata(audience: str = "https://upstream.example") -> bytes:
    entry = initdata.CmcpEntry(BUNDLE, CATALOG, "enforce", "team/route", audience)
    return initdata.render(entry, image=IMAGE, command=["cmcp-enclave"])


@dataclass
class SnpSim:
    """An honest enclave on the simulated SNP guest; ``report()`` overrides let a test lie."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    signer: SimulatedReportSigner = field(default_factory=SimulatedReportSigner)
    nonce: bytes = field(default_factory=lambda: os.urandom(32))
    initdata: bytes = field(default_factory=_initdata)

    def report(self, *, host_data: bytes | None = None, measurement: bytes = SIMULATED_SNP_MEASUREMENT,
               policy: int = SIMULATED_SNP_POLICY, nonce: bytes | None = None) -> bytes:
        rd = Binding(public_bytes(self.key.public_key()), BUNDLE, CATALOG, "enforce",
                     nonce or self.nonce).report_data()
        measured = host_data if host_data is not None else initdata.snp_host_data(self.initdata)
        return self.signer.report(rd, measured, measurement=measurement, policy=policy)

    def appraise(self, evidence: bytes, **kw: Any) -> Verdict:
        args: dict[str, Any] = {
            "initdata": self.initdata, "public_key_jwk": public_jwk(self.key.public_key()),
            "bundle_hash": BUNDLE, "catalog_hash": CATALOG, "enforcement_mode": "enforce",
            "nonce": self.nonce, "policy": ALLOW_SIM, "aux": self.signer.cert_table,
        }
        args.update(kw)
        platform = args.pop("platform", PLATFORM)
        return appraise_attestation(platform, evidence, **args)


@pytest.fixture
def sim() -> SnpSim:
    return SnpSim()


def test_honest_simulated_snp_enclave_passes_software_only(sim: SnpSim) -> None:
    v = sim.appraise(sim.report())
    assert v.passed and v.assurance == "software-only" and v.platform == PLATFORM, v.message
    assert v.measurements["host_data"] == initdata.snp_host_data(sim.initdata).hex()
    assert v.measurements["measurement"] == SIMULATED_SNP_MEASUREMENT.hex()
    assert "simulator-signature" in v.checks and "initdata-measurement" in v.checks
    assert "report-data-binding" in v.checks and f"release:{dev_release().version}" in v.checks


def test_simulated_snp_needs_explicit_permission(sim: SnpSim) -> None:
    v = sim.appraise(sim.report(), policy=dataclasses.replace(ALLOW_SIM, allow_simulated=False))
    assert not v.passed and v.code == Code.SIMULATED_NOT_ALLOWED.value


def test_simulated_snp_report_cannot_pose_as_snp(sim: SnpSim) -> None:
    v = sim.appraise(sim.report(), platform="snp")
    assert not v.passed and v.code == Code.EVIDENCE_UNSUPPORTED.value and v.assurance == "none"


def test_host_data_of_another_initdata_is_refused(sim: SnpSim) -> None:
    """The host measured one initdata, the enclave presents another: INITDATA_MISMATCH, as on
    AMD hardware."""
    other = initdata.snp_host_data(_initdata(audience="urn:cmcp:attacker"))
    v = sim.appraise(sim.report(host_data=other))
    assert not v.passed and v.code == Code.INITDATA_MISMATCH.value and "HOST_DATA" in v.message


def test_a_weakened_appraiser_without_the_host_data_check_lets_the_attack_through(
    sim: SnpSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = initdata.snp_host_data(_initdata(audience="urn:cmcp:attacker"))
    weakened = lambda raw, platform, measured: bindings.check_initdata(  # noqa: E731
        raw, platform, initdata.snp_host_data(raw))
    monkeypatch.setattr(appraise_mod, "check_initdata", weakened)
    assert sim.appraise(sim.report(host_data=other)).passed


def test_wrong_nonce_is_a_binding_mismatch(sim: SnpSim) -> None:
    v = sim.appraise(sim.report(nonce=os.urandom(32)))
    assert not v.passed and v.code == Code.BINDING_REPORT_DATA_MISMATCH.value


def test_a_guest_with_another_measurement_is_refused_by_the_release(sim: SnpSim) -> None:
    """Another launch digest (the host booted another kernel or command line): only the
    release's reference values refuse it."""
    forged = hashlib.sha384(SIMULATED_SNP_MEASUREMENT + b"init=/bin/sh").digest()
    v = sim.appraise(sim.report(measurement=forged))
    assert not v.passed and v.code == Code.REFERENCE_VALUE_MISMATCH.value and "MEASUREMENT" in v.message


def test_a_debug_guest_is_refused(sim: SnpSim) -> None:
    v = sim.appraise(sim.report(policy=SIMULATED_SNP_POLICY | POLICY_DEBUG))
    assert not v.passed and v.code == Code.DEBUG_ENABLED.value


def test_a_release_without_the_simulated_snp_guest_refuses_it(sim: SnpSim) -> None:
    tdx_only = dataclasses.replace(dev_release(IMAGE), simulated_snp=None)
    v = sim.appraise(sim.report(), policy=dataclasses.replace(ALLOW_SIM, releases=(tdx_only,)))
    assert not v.passed and v.code == Code.REFERENCE_VALUE_MISMATCH.value


def test_pinned_simulator_keys(sim: SnpSim) -> None:
    pinned = dataclasses.replace(ALLOW_SIM, simulator_keys=frozenset({sim.signer.attestation_key}))
    assert sim.appraise(sim.report(), policy=pinned).passed
    stranger = SimulatedReportSigner().attestation_key
    other = dataclasses.replace(ALLOW_SIM, simulator_keys=frozenset({stranger}))
    v = sim.appraise(sim.report(), policy=other)
    assert not v.passed and v.code == Code.EVIDENCE_CHAIN_INVALID.value


def test_a_flipped_report_byte_or_another_simulators_table_is_refused(sim: SnpSim) -> None:
    raw = bytearray(sim.report())
    raw[0x90] ^= 1  # MEASUREMENT
    assert sim.appraise(bytes(raw)).code == Code.EVIDENCE_BAD_SIGNATURE.value
    v = sim.appraise(sim.report(), aux=SimulatedReportSigner().cert_table)
    assert not v.passed and v.code == Code.EVIDENCE_BAD_SIGNATURE.value


def test_bare_evidence_is_authentic_software_only(sim: SnpSim) -> None:
    v = appraise_evidence(PLATFORM, sim.report(), policy=ALLOW_SIM, aux=sim.signer.cert_table)
    assert v.passed and v.assurance == "software-only", v.message
    strict = appraise_evidence(PLATFORM, sim.report(), policy=AppraisalPolicy(releases=ALLOW_SIM.releases),
                               aux=sim.signer.cert_table)
    assert not strict.passed and strict.code == Code.SIMULATED_NOT_ALLOWED.value
