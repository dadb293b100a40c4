"""A peer enclave is trusted only when its evidence shows the very guest the appraiser is.

Real in-process enclaves on the simulated TEE: one on the same bundle is a peer; one on another
bundle (other initdata), a response whose key is not the one its evidence binds, and a platform
the module does not compare are each refused with ``PRINCIPAL_TRAIL_INVALID``. A weakened
appraisal that does not pin the initdata accepts the other bundle's enclave.

The same on SNP: enclaves whose real ``ConfigfsTsmProvider`` reads simulated SNP reports from an
emulated configfs-tsm. A peer booted with another launch measurement, or on another bundle, is
refused, and so is a simulated peer offered to an enclave on hardware SNP; a weakened comparison
that takes the launch values from the peer's own report accepts the other measurement.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import initdata
from cmcp_core.crypto import public_jwk, thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.verify import peer as peer_mod
from cmcp_core.verify.peer import appraise_peer
from cmcp_devkit.enclave import inprocess_enclave, render_initdata
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.startup import start
from cmcp_enclave.tee import ConfigfsTsmProvider
from tests.helpers.enclave_calls import peer_attestation
from tests.helpers.tsm_emulator import SNP_REPORT, emulated_tsm
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
            appraise_peer("coco-aa", evidence, one.initdata_bytes, seen.attestation, seen.nonce)
    assert refused.value.code is Code.PRINCIPAL_TRAIL_INVALID


def test_weakened_appraisal_without_the_initdata_pin_accepts_another_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "one")
    other = inprocess_enclave(_other_bundle(tmp_path), tmp_path / "other")
    real = peer_mod.appraise_response
    monkeypatch.setattr(peer_mod, "appraise_response",
                        lambda response, nonce, policy, **_: real(response, nonce, policy))
    assert _appraise(one, other) == other.kid


@contextmanager
def _snp_enclaves(tmp_path: Path, *guests: tuple[Path, bytes | None]) -> Iterator[list[Enclave]]:
    """One enclave per ``(bundle, launch measurement)`` on simulated SNP, each on its own emulated
    configfs-tsm (its own simulator key, as on separate nodes); None: the genuine guest's."""
    with ExitStack() as stack:
        enclaves = []
        for i, (bundle, measurement) in enumerate(guests):
            data = render_initdata(bundle)
            options = {} if measurement is None else {"snp_measurement": measurement}
            emu = stack.enter_context(emulated_tsm(tmp_path / f"tsm{i}", "snp", initdata.snp_host_data(data),
                                                   simulator=True, **options))
            (tmp_path / f"initdata{i}.toml").write_bytes(data)
            enclaves.append(start(bundle_dir=bundle, initdata_path=tmp_path / f"initdata{i}.toml",
                                  provider=ConfigfsTsmProvider("snp", str(emu.root))))
        yield enclaves


def test_an_snp_enclave_on_the_same_bundle_is_a_peer(tmp_path: Path) -> None:
    genuine = (EXAMPLES / "realistic", None)
    with _snp_enclaves(tmp_path, genuine, genuine) as (one, two):
        assert one.startup_report.platform == "simulated-snp"
        assert _appraise(one, two) == two.kid


@pytest.mark.parametrize("attack", ["another launch measurement", "another bundle"])
def test_an_snp_peer_that_is_not_the_same_guest_is_refused(tmp_path: Path, attack: str) -> None:
    other = (EXAMPLES / "realistic", bytes([7]) * 48) if attack == "another launch measurement" \
        else (_other_bundle(tmp_path), None)
    with _snp_enclaves(tmp_path, (EXAMPLES / "realistic", None), other) as (one, two), \
            pytest.raises(CmcpError) as refused:
        _appraise(one, two)
    assert refused.value.code is Code.PRINCIPAL_TRAIL_INVALID
    assert ("REFERENCE_VALUE_MISMATCH" if attack == "another launch measurement" else "INITDATA") \
        in refused.value.detail


def test_a_hardware_snp_enclave_refuses_a_simulated_peer(tmp_path: Path) -> None:
    """The host offers a simulated SNP peer to an enclave on real SNP (its own report: AMD's)."""
    with _snp_enclaves(tmp_path, (EXAMPLES / "realistic", None)) as (peer,):
        seen = peer_attestation(peer)
        with pytest.raises(CmcpError) as refused:
            appraise_peer("snp", SNP_REPORT, peer.initdata_bytes, seen.attestation, seen.nonce)
    assert refused.value.code is Code.PRINCIPAL_TRAIL_INVALID
    assert "platform 'simulated-snp' is not accepted" in refused.value.detail


def test_weakened_comparison_with_the_peers_own_launch_values_accepts_another_measurement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _snp_enclaves(tmp_path, (EXAMPLES / "realistic", None), (EXAMPLES / "realistic", bytes([7]) * 48)) \
            as (one, two):
        peers_own = peer_mod._own_launch(two.startup_report.platform, two.startup_report.evidence)
        monkeypatch.setattr(peer_mod, "_own_launch", lambda platform, evidence: peers_own)
        assert _appraise(one, two) == two.kid
