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
from tests.paths import DATA

TDX = [
    "--platform",
    "tdx",
    "--evidence",
    str(DATA / "tdx" / "tdx_quote"),
    "--collateral",
    str(DATA / "tdx" / "tdx_quote_collateral.json"),
]


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    return dict(json.loads(capsys.readouterr().out))


def test_tdx_fixture_pinned_time_and_today(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(["verify", "evidence", *TDX, "--now", "2025-06-19T11:16:03Z", "--json"]) == 0
    out = _json(capsys)
    assert out["tcb_status"] == "UpToDate" and out["assurance"] == "hardware"
    assert cmcpctl(["verify", "evidence", *TDX, "--json"]) == 1
    assert _json(capsys)["code"] == "COLLATERAL_EXPIRED"
    assert (
        cmcpctl(["verify", "evidence", *TDX, "--now", "1750335363", "--accept-tcb-status", "OutOfDate"]) == 1
    )
    assert "TCB_STATUS_REJECTED" in capsys.readouterr().out


def test_snp_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    ev = str(DATA / "snp-azure" / "evidence.json")
    assert (
        cmcpctl(
            ["verify", "evidence", "--platform", "snp", "--evidence", ev, "--now", "2026-08-01T00:00:00Z"]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("PASS OK [snp, hardware]")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cmcpctl(["verify", "evidence", "--platform", "tdx"]) == 2
    assert cmcpctl(["verify", "evidence", "--platform", "tdx", "--evidence", str(tmp_path / "nope")]) == 2
    assert cmcpctl(["verify", "evidence", *TDX, "--now", "yesterday"]) == 2
    assert cmcpctl(["verify", "evidence", *TDX, "--nonce", "zz"]) == 2
    assert cmcpctl(["verify", "evidence", *TDX, "--nonce", "00" * 32]) == 2  # binding needs initdata etc.
    assert cmcpctl(["verify"]) == 2


def test_simulated_binding_and_response(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    nonce = os.urandom(32)
    entry = initdata.CmcpEntry("sha256:" + "ab" * 32, "sha256:" + "cd" * 32, "enforce", "t/r", "http://up")
    toml = initdata.render(entry, image="img", command=["cmcp-enclave"])
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
    base = ["verify", "evidence", "--response", str(tmp_path / "resp.json"), "--allow-simulated"]
    assert cmcpctl([*base, "--nonce", nonce.hex(), "--expected-bundle-hash", entry.bundle_hash]) == 0
    assert cmcpctl([*base, "--nonce", nonce.hex(), "--expected-bundle-hash", "sha256:" + "0" * 64]) == 1
    assert cmcpctl(base) == 2  # a response without the verifier's nonce is a usage error
