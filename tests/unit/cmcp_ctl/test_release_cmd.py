"""``cmcpctl release``: keys, signed manifests from reference values, and their verification."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from cmcp_core import launch_policy, release
from cmcp_core.evidence.simulated import SIMULATED_MRTD
from cmcp_ctl.main import main as cmcpctl

IMAGE = "ghcr.io/cmcp/enclave@sha256:" + "ab" * 32
TDX = ["--tdx-mrtd", "11" * 48, "--tdx-rtmr0", "22" * 48, "--tdx-rtmr1", "33" * 48, "--tdx-rtmr2", "44" * 48]
SNP = ["--snp-measurement", "55" * 48, "--snp-policy", "0x30000", "--snp-min-tcb", "snp=24,microcode=219"]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    assert cmcpctl(["release", "keygen", "--out-key", str(key), "--out-pub", str(pub)]) == 0
    return key, pub


def test_keygen_writes_a_private_key_only_its_owner_reads(keys: tuple[Path, Path]) -> None:
    key, pub = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    assert cmcpctl(["release", "keygen", "--out-key", str(key), "--out-pub", str(pub)]) == 2  # no clobber


def test_a_manifest_round_trips_through_verify(
    keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    out = tmp_path / "m.json"
    assert cmcpctl(["release", "manifest", "--version", "1.4.0", "--image", IMAGE, *TDX, *SNP,
                    "--simulated", "--signing-key", str(key), "-o", str(out)]) == 0
    assert cmcpctl(["release", "verify", str(out), "--key", str(pub), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "1.4.0" and doc["image"] == IMAGE
    assert doc["launchPolicyRules"] == launch_policy.rules_digest()
    assert doc["platforms"]["tdx"]["rtmr1"] == "33" * 48
    assert doc["platforms"]["snp"] == {"measurement": "55" * 48, "policy": 0x30000,
                                       "minTcb": {"snp": 24, "microcode": 219}, "vmpl": 0}
    assert doc["platforms"]["simulated"]["mrtd"] == SIMULATED_MRTD.hex()
    loaded = release.verify(out.read_bytes(), [release.load_release_key(pub.read_bytes())])
    assert loaded.tdx is not None and loaded.tdx.td_attributes == bytes(8)


def test_a_tampered_or_foreign_manifest_fails_verify(
    keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    out = tmp_path / "m.json"
    assert cmcpctl(["release", "manifest", "--version", "1", "--image", IMAGE, *TDX,
                    "--signing-key", str(key), "-o", str(out)]) == 0
    envelope = json.loads(out.read_text())
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["platforms"]["tdx"]["mrtd"] = "ff" * 48  # the host's own firmware
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(envelope))
    assert cmcpctl(["release", "verify", str(tampered), "--key", str(pub)]) == 1
    assert "RELEASE_MANIFEST_INVALID" in capsys.readouterr().err
    other_key, other_pub = tmp_path / "o.key", tmp_path / "o.pub"
    assert cmcpctl(["release", "keygen", "--out-key", str(other_key), "--out-pub", str(other_pub)]) == 0
    assert cmcpctl(["release", "verify", str(out), "--key", str(other_pub)]) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image", "ghcr.io/cmcp/enclave:latest", *TDX], "image"),
        (["--image", IMAGE, "--tdx-mrtd", "11" * 48], "together"),
        (["--image", IMAGE, *TDX[:-1], "44" * 47], "48 bytes"),
        (["--image", IMAGE, "--snp-measurement", "55" * 48], "--snp-policy"),
        (["--image", IMAGE, *SNP[:4], "--snp-min-tcb", "fmc=1"], "--snp-min-tcb"),
        (["--image", IMAGE], "platforms"),
    ],
)
def test_bad_reference_values_are_usage_errors(
    keys: tuple[Path, Path], flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = keys
    assert cmcpctl(["release", "manifest", "--version", "1", *flags, "--signing-key", str(key)]) == 2
    assert message in capsys.readouterr().err


def test_help_reads_like_the_other_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(["release"]) == 2
    assert "keygen" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmcpctl(["--help"])
    assert "release      Sign and verify enclave release manifests" in capsys.readouterr().out
