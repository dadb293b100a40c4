"""Signed enclave release manifests: only a configured key's signature makes one count."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner

from cmcp_core import release
from cmcp_core.errors import CmcpError, Code
from cmcp_core.verify.reference import ReleaseReference, SnpReference, TdxReference
from cmcp_devkit.release import dev_release

KEY = Ed25519PrivateKey.generate()
TRUSTED = release.release_key(KEY.public_key())
FULL = ReleaseReference(
    version="1.2.3", image="ghcr.io/cmcp/enclave@sha256:" + "1" * 64,
    launch_policy_rules="sha256:" + "2" * 64,
    tdx=TdxReference(mrtd=b"\x01" * 48, rtmrs=(b"\x02" * 48, b"\x03" * 48, b"\x04" * 48),
                     min_tee_tcb_svn=bytes(range(16)), td_attributes=b"\x00\x00\x00\x10\x00\x00\x00\x00"),
    snp=SnpReference(measurement=b"\x05" * 48, policy=0x30000, min_tcb={"snp": 0x18, "microcode": 0xDB}),
    simulated=TdxReference(mrtd=b"\x06" * 48, rtmrs=(bytes(48),) * 3),
    simulated_snp=SnpReference(measurement=b"\x07" * 48, policy=0x30000),
)


def _invalid(manifest: bytes, keys: list[object] | None = None) -> str:
    with pytest.raises(CmcpError) as err:
        release.verify(manifest, [TRUSTED] if keys is None else keys)  # type: ignore[list-item]
    assert err.value.code is Code.RELEASE_MANIFEST_INVALID
    return err.value.detail


def test_a_signed_manifest_round_trips_every_value() -> None:
    got = release.verify(release.sign(FULL, KEY), [TRUSTED])
    assert dataclasses.replace(got, signer="") == FULL
    assert got.signer == TRUSTED.keyid


def test_ecdsa_release_keys_work_too() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    assert release.verify(release.sign(FULL, key), [release.release_key(key.public_key())]).version == "1.2.3"


def test_a_manifest_signed_by_another_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    assert "no configured release key" in _invalid(release.sign(FULL, other))
    assert "no release key" in _invalid(release.sign(FULL, KEY), keys=[])


def test_an_edited_payload_is_refused() -> None:
    """The attacker's move: keep the signature, point the release at their own firmware."""
    envelope = json.loads(release.sign(FULL, KEY))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["platforms"]["tdx"]["mrtd"] = "ff" * 48
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    _invalid(json.dumps(envelope).encode())


def test_another_payload_type_is_refused_even_if_signed() -> None:
    env = Envelope(json.dumps(release.to_payload(FULL)).encode(), "application/vnd.in-toto+json", {})
    env.sign(CryptoSigner(KEY))
    assert "payload type" in _invalid(json.dumps(env.to_dict()).encode())


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda p: p.update(kind="Other"), "EnclaveRelease"),
        (lambda p: p.update(image="ghcr.io/cmcp/enclave:latest"), "image"),
        (lambda p: p.update(launchPolicyRules="md5:00"), "launchPolicyRules"),
        (lambda p: p.update(version=""), "version"),
        (lambda p: p.update(platforms={}), "platforms"),
        (lambda p: p["platforms"].update(sgx={}), "platforms"),
        (lambda p: p["platforms"]["tdx"].update(mrtd="00" * 47), "platforms.tdx.mrtd"),
        (lambda p: p["platforms"]["tdx"].update(rtmr2="zz" * 48), "platforms.tdx.rtmr2"),
        (lambda p: p["platforms"]["snp"].update(policy=-1), "platforms.snp.policy"),
        (lambda p: p["platforms"]["snp"].update(vmpl=True), "platforms.snp.vmpl"),
        (lambda p: p["platforms"]["snp"]["minTcb"].update(fmc=1), "minTcb"),
        (lambda p: p["platforms"]["simulated-snp"].update(measurement="07" * 32),
         "platforms.simulated-snp.measurement"),
        (lambda p: p["platforms"]["simulated-snp"].update(policy="0x30000"),
         "platforms.simulated-snp.policy"),
        (lambda p: p["platforms"].update(simulatedSnp={}), "platforms"),
    ],
)
def test_a_malformed_payload_names_its_field(edit: object, field: str) -> None:
    payload = release.to_payload(FULL)
    edit(payload)  # type: ignore[operator]
    with pytest.raises(CmcpError) as err:
        release.from_payload(payload)
    assert err.value.code is Code.RELEASE_MANIFEST_INVALID and field in err.value.detail


def test_a_manifest_from_before_simulated_snp_reads_as_before() -> None:
    """Backward compatible: a payload without ``simulated-snp`` (every older manifest) loads,
    with no simulated SNP guest admitted."""
    older = dataclasses.replace(FULL, simulated_snp=None)
    payload = release.to_payload(older)
    assert set(payload["platforms"]) == {"tdx", "snp", "simulated"}
    got = release.from_payload(payload)
    assert got == older and got.for_platform("simulated-snp") is None


def test_the_dev_release_admits_both_simulated_guests() -> None:
    dev = dev_release()
    assert dev.for_platform("simulated") is not None and dev.for_platform("simulated-snp") is not None
    assert release.from_payload(release.to_payload(dev)) == dev


def test_garbage_is_a_coded_error_not_a_crash() -> None:
    for blob in (b"", b"{", b"[]", b'{"payload": 1}', b"\xff" * 10, b"{" * 70_000):
        _invalid(blob)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def test_load_releases_from_files(tmp_path: Path) -> None:
    manifest, pub = tmp_path / "m.json", tmp_path / "k.pem"
    manifest.write_bytes(release.sign(dev_release(), KEY))
    pub.write_bytes(_pem(KEY))
    (loaded,) = release.load_releases([manifest], [pub])
    assert loaded.simulated == dev_release().simulated
    with pytest.raises(CmcpError, match=r"m\.json"):
        release.load_releases([manifest], [])
    with pytest.raises(CmcpError, match=r"missing\.json"):
        release.load_releases([tmp_path / "missing.json"], [pub])
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(CmcpError) as err:
        release.load_releases([manifest], [tmp_path / "bad.pem"])
    assert err.value.code is Code.RELEASE_MANIFEST_INVALID


def test_private_keys_load_from_unencrypted_pem_only() -> None:
    pem = KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    assert release.load_private_key(pem).public_key() == KEY.public_key()  # type: ignore[union-attr]
    with pytest.raises(CmcpError):
        release.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
