"""A peer enclave is trusted only when its evidence shows the very guest the appraiser is.

Real in-process enclaves on the simulated TEE: one on the same bundle is a peer; one on another
bundle (other initdata), a response whose key is not the one its evidence binds, and a platform
the module does not compare are each refused with ``PRINCIPAL_TRAIL_INVALID``. A weakened
appraisal that does not pin the initdata accepts the other bundle's enclave.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.crypto import public_jwk, thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.verify import peer as peer_mod
from cmcp_core.verify.peer import appraise_peer
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import peer_attestation
from tests.paths import EXAMPLES


def _other_bundle(tmp_path: Path) -> Path:
    other = tmp_path / "other-bundle"
    shutil.copytree(EXAMPLES / "realistic", other)
    policy = other / "policies" / "taint.cedar"
    policy.write_text(policy.read_text() + "\n// another bundle: another bundle_hash, another initdata\n")
    return other


def _appraise(appraiser: Enclave, peer: Enclave, **change: str) -> str:
    seen = peer_attestation(peer)
    for name, value in change.items():
        setattr(seen.attestation, name, value)
    key = appraise_peer(appraiser.startup_report.platform, appraiser.startup_report.evidence,
                        appraiser.initdata_bytes, seen.attestation, seen.nonce)
    return thumbprint(key)


def test_an_enclave_on_the_same_bundle_is_a_peer(tmp_path: Path) -> None:
    one, two = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("one", "two"))
    assert _appraise(one, two) == two.kid


@pytest.mark.parametrize("attack", ["another bundle", "another key", "unsupported platform"])
def test_anything_but_the_same_guest_is_refused(tmp_path: Path, attack: str) -> None:
    one = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "one")
    with pytest.raises(CmcpError) as refused:
        if attack == "another bundle":
            _appraise(one, inprocess_enclave(_other_bundle(tmp_path), tmp_path / "other"))
        elif attack == "another key":  # a host pairs genuine evidence with a key it holds
            forged = json.dumps(public_jwk(Ed25519PrivateKey.generate().public_key()))
            _appraise(one, inprocess_enclave(EXAMPLES / "realistic", tmp_path / "two"), public_key_jwk=forged)
        else:
            seen = peer_attestation(one)
            evidence = one.startup_report.evidence
            appraise_peer("snp", evidence, one.initdata_bytes, seen.attestation, seen.nonce)
    assert refused.value.code is Code.PRINCIPAL_TRAIL_INVALID


def test_weakened_appraisal_without_the_initdata_pin_accepts_another_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "one")
    other = inprocess_enclave(_other_bundle(tmp_path), tmp_path / "other")
    real = peer_mod.appraise_response
    monkeypatch.setattr(peer_mod, "appraise_response",
                        lambda response, nonce, policy, **_: real(response, nonce, policy))
    assert _appraise(one, other) == other.kid
