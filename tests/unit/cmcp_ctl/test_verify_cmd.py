"""``cmcpctl verify evidence`` on the real fixtures and simulated evidence: output and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from cmcp_core import initdata
from cmcp_core.binding import Binding
from cmcp_core.crypto import public_bytes, public_jwk
from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.proto import enclave_pb2
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_release, release_argv, release_of
from tests.paths import DATA

TDX = [
    "--platform",
    "tdx",
    "--evidence",
    str(DATA / "tdx" / "tdx_quote"),
    "--collateral",
    str(DATA / "tdx" / "tdx_quote_collateral.json"),
]


@pytest.fixture
def releases(tmp_path: Path) -> list[str]:
    """Signed manifests for both real fixtures' guests and the dev kit's simulated guest."""
    return release_argv(tmp_path / "releases", release_of("tdx", (DATA / "tdx" / "tdx_quote").read_bytes()),
                        release_of("snp", (DATA / "snp-azure" / "evidence.json").read_bytes()), dev_release())


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    return dict(json.loads(capsys.readouterr().out))


def test_tdx_fixture_pinned_time_and_today(capsys: pytest.CaptureFixture[str], releases: list[str]) -> None:
    tdx = [*TDX, *releases]
    assert cmcpctl(["verify", "evidence", *tdx, "--now", "2025-06-19T11:16:03Z", "--json"]) == 0
    out = _json(capsys)
    assert out["tcb_status"] == "UpToDate" and out["assurance"] == "hardware"
    assert cmcpctl(["verify", "evidence", *tdx, "--json"]) == 1
    assert _json(capsys)["code"] == "COLLATERAL_EXPIRED"
    assert (
        cmcpctl(["verify", "evidence", *tdx, "--now", "1750335363", "--accept-tcb-status", "OutOfDate"]) == 1
    )
    assert "TCB_STATUS_REJECTED" in capsys.readouterr().out


def test_genuine_hardware_evidence_needs_a_release_that_names_its_guest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real Intel evidence of a guest no configured release names is refused, never a warning."""
    pinned = ["--now", "2025-06-19T11:16:03Z", "--json"]
    assert cmcpctl(["verify", "evidence", *TDX, *pinned]) == 2
    assert "REFERENCE_VALUES_MISSING" in capsys.readouterr().err
    other_guest = release_argv(tmp_path / "snp-only",
                               release_of("snp", (DATA / "snp-azure" / "evidence.json").read_bytes()))
    assert cmcpctl(["verify", "evidence", *TDX, *other_guest, *pinned]) == 1
    assert _json(capsys)["code"] == "REFERENCE_VALUE_MISMATCH"


def test_snp_fixture(capsys: pytest.CaptureFixture[str], releases: list[str]) -> None:
    ev = str(DATA / "snp-azure" / "evidence.json")
    assert (
        cmcpctl(
            ["verify", "evidence", "--platform", "snp", "--evidence", ev, "--now", "2026-08-01T00:00:00Z",
             *releases]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("PASS OK [snp, hardware]")


def test_usage_errors_exit_2(tmp_path: Path, releases: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    tdx = [*TDX, *releases]  # with releases, so each exit 2 below is the flag's own fault
    assert cmcpctl(["verify", "evidence", "--platform", "tdx", *releases]) == 2
    missing = str(tmp_path / "nope")
    assert cmcpctl(["verify", "evidence", "--platform", "tdx", "--evidence", missing, *releases]) == 2
    assert cmcpctl(["verify", "evidence", *tdx, "--now", "yesterday"]) == 2
    assert "--now" in capsys.readouterr().err
    assert cmcpctl(["verify", "evidence", *tdx, "--nonce", "zz"]) == 2
    assert cmcpctl(["verify", "evidence", *tdx, "--nonce", "00" * 32]) == 2  # binding needs initdata etc.
    assert "--initdata" in capsys.readouterr().err
    assert cmcpctl(["verify"]) == 2


def test_simulated_binding_and_response(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], releases: list[str]
) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    nonce = os.urandom(32)
    entry = initdata.CmcpEntry("sha256:" + "ab" * 32, "sha256:" + "cd" * 32, "enforce", "t/r", "http://up")
    toml = initdata.render(entry, image=TEST_IMAGE, command=["cmcp-enclave"])
    rd = Binding(public_bytes(key), entry.bundle_hash, entry.catalog_hash, "enforce", nonce).report_data()
    quote = SimulatedQuoteSigner().quote(rd, initdata.tdx_mrconfigid(toml))
    (tmp_path / "q").write_bytes(quote)
    (tmp_path / "init.toml").write_bytes(toml)
    flags = [
        "verify",
        "evidence",
        "--platform",
        "simulated",
        "--evidence",
        str(tmp_path / "q"),
        "--initdata",
        str(tmp_path / "init.toml"),
        "--public-key-jwk",
        json.dumps(public_jwk(key)),
        "--bundle-hash",
        entry.bundle_hash,
        "--catalog-hash",
        entry.catalog_hash,
        "--mode",
        "enforce",
        *releases,
        "--nonce",
        nonce.hex(),
        "--json",
    ]
    assert cmcpctl(flags) == 1
    assert _json(capsys)["code"] == "SIMULATED_NOT_ALLOWED"
    assert cmcpctl([*flags, "--allow-simulated"]) == 0
    assert _json(capsys)["assurance"] == "software-only"
    assert cmcpctl([*flags[:-2], os.urandom(32).hex(), "--json", "--allow-simulated"]) == 1
    assert _json(capsys)["code"] == "BINDING_REPORT_DATA_MISMATCH"
    resp = enclave_pb2.AttestResponse(
        platform="simulated",
        evidence=quote,
        initdata=toml,
        public_key_jwk=json.dumps(public_jwk(key)),
        bundle_hash=entry.bundle_hash,
        catalog_hash=entry.catalog_hash,
        enforcement_mode="enforce",
        report_data=rd,
    )
    (tmp_path / "resp.json").write_text(json_format.MessageToJson(resp))
    base = ["verify", "evidence", "--response", str(tmp_path / "resp.json"), "--allow-simulated", *releases]
    assert cmcpctl([*base, "--nonce", nonce.hex(), "--expected-bundle-hash", entry.bundle_hash]) == 0
    assert cmcpctl([*base, "--nonce", nonce.hex(), "--expected-bundle-hash", "sha256:" + "0" * 64]) == 1
    assert cmcpctl(base) == 2  # a response without the verifier's nonce is a usage error
