"""cmcp_devkit.release: the dev kit's signed development release for the simulated guest."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_core import launch_policy
from cmcp_core import release as core_release
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import (
    DEV_VERSION,
    dev_appraisal,
    dev_release,
    simulated_reference,
    write_dev_release,
)
from cmcp_enclave.simulated import SimulatedGuest


def test_simulated_reference_is_the_genuine_simulated_guest_by_default() -> None:
    guest = SimulatedGuest()
    ref = simulated_reference()
    assert (ref.mrtd, ref.rtmrs) == (guest.mrtd, guest.rtmrs)


def test_another_guest_gives_another_reference() -> None:
    other = SimulatedGuest(mrtd=b"\x01" * 48)
    assert simulated_reference(other).mrtd == b"\x01" * 48
    assert dev_release(guest=other).simulated != dev_release().simulated


def test_dev_release_names_image_version_and_current_rules() -> None:
    ref = dev_release("registry.example/enclave@sha256:" + "a" * 64)
    assert ref.version == DEV_VERSION
    assert ref.image == "registry.example/enclave@sha256:" + "a" * 64
    assert ref.launch_policy_rules == launch_policy.rules_digest()
    assert dev_release().image == TEST_IMAGE


def test_dev_appraisal_allows_simulated_evidence_of_the_dev_release_only() -> None:
    policy = dev_appraisal()
    assert policy.allow_simulated is True
    assert policy.releases == (dev_release(),)


def test_written_manifest_verifies_with_the_written_key(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path / "new-dir", name="r1")
    assert dev.manifest == tmp_path / "new-dir" / "r1.json"
    assert dev.key == tmp_path / "new-dir" / "r1.pub.pem"
    signed = core_release.verify(dev.manifest.read_bytes(),
                                 [core_release.load_release_key(dev.key.read_bytes())])
    assert signed.image == TEST_IMAGE and signed.version == DEV_VERSION
    assert dev.release.signer == signed.signer != ""


def test_each_release_has_its_own_key(tmp_path: Path) -> None:
    first = write_dev_release(tmp_path / "a")
    second = write_dev_release(tmp_path / "b")
    assert first.key.read_bytes() != second.key.read_bytes()
    with pytest.raises(CmcpError) as info:  # the second key does not vouch for the first manifest
        core_release.verify(first.manifest.read_bytes(),
                            [core_release.load_release_key(second.key.read_bytes())])
    assert info.value.code == Code.RELEASE_MANIFEST_INVALID


def test_a_stranger_key_does_not_verify_the_manifest(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path)
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CmcpError):
        core_release.verify(dev.manifest.read_bytes(), [core_release.load_release_key(stranger)])


def test_argv_and_config_point_relying_parties_at_the_files(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path, image="img@sha256:" + "b" * 64)
    assert dev.argv() == ["--release-manifest", str(dev.manifest), "--release-key", str(dev.key)]
    assert dev.config() == {"manifests": [str(dev.manifest)], "keys": [str(dev.key)]}
    assert dev.release.image == "img@sha256:" + "b" * 64
