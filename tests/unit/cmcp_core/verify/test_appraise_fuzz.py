"""Fuzzing the appraisal entry points: any input ends in a coded failure, never a pass or a raise."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcp_core import initdata
from cmcp_core.binding import Binding
from cmcp_core.crypto import public_bytes, public_jwk
from cmcp_core.errors import Code
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_attestation, appraise_evidence
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_release, release_of
from tests.paths import DATA

QUOTE = (DATA / "tdx" / "tdx_quote").read_bytes()
COLLATERAL = (DATA / "tdx" / "tdx_quote_collateral.json").read_text()
_ISSUE = json.loads(json.loads(COLLATERAL)["tcb_info"])["issueDate"]
PINNED = int(datetime.fromisoformat(_ISSUE.replace("Z", "+00:00")).timestamp()) + 3600
SNP_JSON = (DATA / "snp-azure" / "evidence.json").read_bytes()
SNP_REPORT = base64.b64decode(json.loads(SNP_JSON)["snp_report"])
SNP_NOW = PINNED + int(timedelta(days=400).total_seconds())  # 2026-07-24: inside the VCEK window
CODES = {c.value for c in Code}

KEY = Ed25519PrivateKey.generate().public_key()
NONCE = os.urandom(32)
ENTRY = initdata.CmcpEntry("sha256:" + "ab" * 32, "sha256:" + "cd" * 32, "enforce", "t/r", "http://up")
INITDATA = initdata.render(ENTRY, image=TEST_IMAGE, command=["cmcp-enclave"])
SIGNER = SimulatedQuoteSigner()
RD = Binding(public_bytes(KEY), ENTRY.bundle_hash, ENTRY.catalog_hash, "enforce", NONCE).report_data()
SIM_QUOTE = SIGNER.quote(RD, initdata.tdx_mrconfigid(INITDATA))
# Releases for every guest here, so a fuzzed input can only fail on what the fuzz changed.
FIXTURES = AppraisalPolicy(releases=(release_of("tdx", QUOTE), release_of("snp", SNP_JSON)))
ALLOW_SIM = AppraisalPolicy(allow_simulated=True, releases=(*FIXTURES.releases, dev_release()))


def _appraise(platform: str, evidence: bytes, aux: bytes = b"") -> Verdict:
    return appraise_attestation(
        platform,
        evidence,
        aux=aux,
        initdata=INITDATA,
        public_key_jwk=public_jwk(KEY),
        bundle_hash=ENTRY.bundle_hash,
        catalog_hash=ENTRY.catalog_hash,
        enforcement_mode="enforce",
        nonce=NONCE,
        policy=ALLOW_SIM,
        collateral=COLLATERAL,
        now=PINNED,
    )


def _failed(v: Verdict) -> bool:
    return not v.passed and v.code in CODES and v.code != "OK"


def test_the_honest_baseline_passes() -> None:
    assert _appraise("simulated", SIM_QUOTE).passed  # so that every failure below is caused by the fuzz


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["tdx", "snp", "simulated"]), st.binary(max_size=6000), st.binary(max_size=200))
def test_random_evidence_never_passes(platform: str, evidence: bytes, aux: bytes) -> None:
    assert _failed(_appraise(platform, evidence, aux))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SIM_QUOTE) - 1), st.integers(min_value=1, max_value=255))
def test_flipped_simulated_quote_never_passes(pos: int, xor: int) -> None:
    raw = bytearray(SIM_QUOTE)
    raw[pos] ^= xor
    assert _failed(_appraise("simulated", bytes(raw)))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(QUOTE) - 1), st.integers(min_value=1, max_value=255))
def test_flipped_intel_quote_never_passes(pos: int, xor: int) -> None:
    raw = bytearray(QUOTE)
    raw[pos] ^= xor
    assert _failed(appraise_evidence("tdx", bytes(raw), collateral=COLLATERAL, policy=FIXTURES, now=PINNED))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(QUOTE) - 71), st.binary(max_size=64))
def test_truncated_or_extended_intel_quote_never_passes(cut: int, tail: bytes) -> None:
    raw = QUOTE[:cut] + tail
    assert _failed(appraise_evidence("tdx", raw, collateral=COLLATERAL, policy=FIXTURES, now=PINNED))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SNP_REPORT) - 1), st.integers(min_value=1, max_value=255))
def test_flipped_snp_report_never_passes(pos: int, xor: int) -> None:
    doc = json.loads(SNP_JSON)
    raw = bytearray(SNP_REPORT)
    raw[pos] ^= xor
    doc["snp_report"] = base64.b64encode(bytes(raw)).decode()
    assert _failed(appraise_evidence("snp", json.dumps(doc).encode(), policy=FIXTURES, now=SNP_NOW))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_snp_json_and_chains_never_pass(blob: bytes) -> None:
    assert _failed(appraise_evidence("snp", SNP_REPORT, aux=blob, policy=FIXTURES, now=SNP_NOW))
    assert _failed(appraise_evidence("snp", b"{" + blob, policy=FIXTURES, now=SNP_NOW))


def test_baselines_for_the_real_fixtures() -> None:
    assert appraise_evidence("tdx", QUOTE, collateral=COLLATERAL, policy=FIXTURES, now=PINNED).passed
    assert appraise_evidence("snp", SNP_JSON, policy=FIXTURES, now=SNP_NOW).passed


_ANY = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=40),
    st.binary(max_size=80),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(_ANY, _ANY, _ANY, _ANY, _ANY)
def test_garbage_arguments_never_raise_or_pass(
    nonce: object, jwk: object, bundle: object, initdata_: object, claimed: object
) -> None:
    v = appraise_attestation(
        "simulated",
        SIM_QUOTE,
        initdata=initdata_,
        public_key_jwk=jwk,
        bundle_hash=bundle,  # type: ignore[arg-type]
        catalog_hash=ENTRY.catalog_hash,
        enforcement_mode="enforce",
        nonce=nonce,  # type: ignore[arg-type]
        policy=ALLOW_SIM,
        claimed_report_data=claimed,  # type: ignore[arg-type]
    )
    assert _failed(v)
