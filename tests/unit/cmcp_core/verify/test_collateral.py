"""TDX collateral in the serving path: the real Intel quote appraised through the cache setting.

The operator, gateway and guard pass no collateral of their own: they configure a cache
directory (and optionally a PCCS) with ``--tdx-collateral-dir``/``--pccs-url``, and
:func:`cmcp_core.appraisal_options.appraisal_policy` turns that into the policy they appraise
with. These tests build the policy exactly that way, from a signed manifest on disk.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_core import release
from cmcp_core.appraisal_options import appraisal_policy
from cmcp_core.errors import Code
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify import AppraisalPolicy, appraise_evidence, collateral
from cmcp_devkit.release import release_of
from tests.paths import DATA

QUOTE = (DATA / "tdx" / "tdx_quote").read_bytes()
COLLATERAL = (DATA / "tdx" / "tdx_quote_collateral.json").read_text()
_ISSUE = json.loads(json.loads(COLLATERAL)["tcb_info"])["issueDate"]
PINNED = datetime.fromisoformat(_ISSUE.replace("Z", "+00:00")) + timedelta(hours=1)
KEY_NAME = "b0c06f000000-platform"  # the fixture's FMSPC and the CA that issued its PCK


def _serving_policy(tmp_path: Path, cache: Path, pccs_url: str | None = None) -> AppraisalPolicy:
    """What a component configured with a manifest, its key and a collateral cache appraises with."""
    key = Ed25519PrivateKey.generate()
    manifest, pub = tmp_path / "release.json", tmp_path / "release.pub.pem"
    manifest.write_bytes(release.sign(release_of("tdx", QUOTE), key))
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return appraisal_policy(release_manifests=[str(manifest)], release_keys=[str(pub)],
                            collateral_dir=str(cache), pccs_url=pccs_url)


def test_the_cache_key_is_the_pck_fmspc_and_ca() -> None:
    assert collateral.cache_key(parse_quote(QUOTE)) == KEY_NAME


def test_real_intel_evidence_through_the_collateral_cache(tmp_path: Path) -> None:
    cache = tmp_path / "tdx-collateral"
    cache.mkdir()
    (cache / f"{KEY_NAME}.json").write_text(COLLATERAL)
    v = appraise_evidence("tdx", QUOTE, policy=_serving_policy(tmp_path, cache), now=PINNED)
    assert v.passed, v.message
    assert v.assurance == "hardware" and v.tcb_status == "UpToDate" and "release:fixture" in v.checks


def test_an_empty_cache_without_pccs_is_a_coded_refusal(tmp_path: Path) -> None:
    v = appraise_evidence("tdx", QUOTE, policy=_serving_policy(tmp_path, tmp_path / "empty"), now=PINNED)
    assert not v.passed and v.code == Code.COLLATERAL_INVALID and KEY_NAME in v.message


def test_a_tampered_cached_collateral_is_refused(tmp_path: Path) -> None:
    """Whoever can write the cache still cannot vouch for a quote: the collateral is signed by Intel."""
    cache = tmp_path / "c"
    cache.mkdir()
    doc = json.loads(COLLATERAL)
    doc["tcb_info"] = doc["tcb_info"].replace('"OutOfDate"', '"UpToDate"', 1)
    (cache / f"{KEY_NAME}.json").write_text(json.dumps(doc))
    v = appraise_evidence("tdx", QUOTE, policy=_serving_policy(tmp_path, cache), now=PINNED)
    assert not v.passed and v.code == Code.COLLATERAL_INVALID


def test_a_pccs_fills_the_cache_and_refreshes_expired_collateral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network is the one stand-in: ``fetch`` answers with the real collateral, as a PCCS would."""
    fetched: list[str] = []

    def pccs(url: str, raw_quote: bytes) -> Any:
        fetched.append(url)
        assert raw_quote == QUOTE
        return dcap_qvl.QuoteCollateralV3.from_json(COLLATERAL)

    monkeypatch.setattr(collateral, "fetch", pccs)
    cache = tmp_path / "c"
    policy = _serving_policy(tmp_path, cache, pccs_url="https://pccs.example/sgx/certification/v4/")
    assert appraise_evidence("tdx", QUOTE, policy=policy, now=PINNED).passed
    assert fetched == ["https://pccs.example/sgx/certification/v4/"]
    cached = json.loads((cache / f"{KEY_NAME}.json").read_text())
    assert cached["tcb_info"] == json.loads(COLLATERAL)["tcb_info"]
    assert appraise_evidence("tdx", QUOTE, policy=policy, now=PINNED).passed
    assert len(fetched) == 1  # the second appraisal was served from the cache
    expired = appraise_evidence("tdx", QUOTE, policy=policy, now=PINNED + timedelta(days=400))
    assert not expired.passed and expired.code == Code.COLLATERAL_EXPIRED
    assert len(fetched) == 2  # expired collateral is fetched again once, never used stale


def test_expired_collateral_without_pccs_is_not_refetched(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / f"{KEY_NAME}.json").write_text(COLLATERAL)
    later = PINNED + timedelta(days=400)
    v = appraise_evidence("tdx", QUOTE, policy=_serving_policy(tmp_path, cache), now=later)
    assert not v.passed and v.code == Code.COLLATERAL_EXPIRED
