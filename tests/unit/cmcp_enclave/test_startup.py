"""Start-up order and refusals (docs/enclave.md, "Start-up"), and the evidence binding as a verifier sees it.

Each mismatch must stop the enclave with its code; the simulated quote must carry the
initdata digest in MRCONFIGID and the binding in REPORT_DATA, so that a wrong nonce, key,
bundle hash or initdata is caught by the verifying side (cmcp_core.verify)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cmcp_core import initdata
from cmcp_core.bundle import load_bundle
from cmcp_core.crypto import public_jwk
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify.appraise import appraise_response
from cmcp_devkit.enclave import (
    COMMAND,
    IMAGE,
    EnclaveRefused,
    inprocess_enclave,
    render_initdata,
    start_enclave,
)
from cmcp_devkit.release import dev_appraisal
from cmcp_enclave.server import attest_response
from cmcp_enclave.simulated import ENV_MRCONFIGID, launcher_env
from cmcp_enclave.startup import StartupError, start
from cmcp_enclave.tee import ConfigfsTsmProvider, Report, SimulatedProvider, make_provider
from tests.paths import EXAMPLES

SIMULATED = dev_appraisal()


def _start(bundle: Path, data: bytes, tmp_path: Path, measured: bytes | None = None) -> object:
    path = tmp_path / "initdata.toml"
    path.write_bytes(data)
    provider = SimulatedProvider(initdata.tdx_mrconfigid(measured if measured is not None else data).hex())
    return start(bundle_dir=bundle, initdata_path=path, provider=provider)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(EXAMPLES / "realistic", copy)
    return copy


def _refusal(bundle: Path, data: bytes, tmp_path: Path, measured: bytes | None = None) -> StartupError:
    with pytest.raises(StartupError) as err:
        _start(bundle, data, tmp_path, measured)
    return err.value


def test_honest_start(bundle: Path, tmp_path: Path) -> None:
    enc = _start(bundle, render_initdata(bundle), tmp_path)
    assert enc.bundle_hash == load_bundle(bundle).bundle_hash  # type: ignore[attr-defined]


def test_initdata_not_the_measured_one(bundle: Path, tmp_path: Path) -> None:
    measured = render_initdata(bundle, audience="urn:honest")
    swapped = render_initdata(bundle, audience="urn:attacker")
    assert _refusal(bundle, swapped, tmp_path, measured).code == Code.INITDATA_MISMATCH


def test_initdata_that_does_not_parse(bundle: Path, tmp_path: Path) -> None:
    measured = render_initdata(bundle)
    assert _refusal(bundle, b"version = 1\n[data\n", tmp_path, measured).code == Code.INITDATA_MISMATCH


def _start_from_annotation(bundle: Path, value: str | bytes, measured: bytes, tmp_path: Path) -> object:
    path = tmp_path / "cc_init_data"
    path.write_bytes(value.encode() if isinstance(value, str) else value)
    provider = SimulatedProvider(initdata.tdx_mrconfigid(measured).hex())
    return start(bundle_dir=bundle, initdata_path=path, provider=provider, initdata_annotation=True)


def test_annotation_file_is_decoded_and_rehashed(bundle: Path, tmp_path: Path) -> None:
    """As in a Kata pod: the downward-API file holds base64(gzip(toml)); the decoded bytes are
    the ones measured, and a file decoding to other initdata is refused."""
    data = render_initdata(bundle)
    enc = _start_from_annotation(bundle, initdata.encode_annotation(data) + "\n", data, tmp_path)
    assert enc.initdata_bytes == data  # type: ignore[attr-defined]
    other = render_initdata(bundle, audience="urn:attacker")
    with pytest.raises(StartupError) as err:
        _start_from_annotation(bundle, initdata.encode_annotation(other), data, tmp_path)
    assert err.value.code == Code.INITDATA_MISMATCH and "measured config field" in err.value.detail


@pytest.mark.parametrize("value, detail", [
    ("not base64!", "not base64 of gzip"),
    ("A" * (initdata.MAX_ANNOTATION_CHARS + 8), "over"),
    (initdata.encode_annotation(b"plain = 'toml, no version'\n"), "version"),
])
def test_undecodable_annotation_file_is_a_coded_refusal(bundle: Path, tmp_path: Path, value: str,
                                                         detail: str) -> None:
    with pytest.raises(StartupError) as err:
        _start_from_annotation(bundle, value, render_initdata(bundle), tmp_path)
    assert err.value.code == Code.INITDATA_MISMATCH and detail in err.value.detail


def test_one_byte_policy_change_under_old_initdata(bundle: Path, tmp_path: Path) -> None:
    data = render_initdata(bundle)
    policy = bundle / "policies" / "arguments.cedar"
    policy.write_text(policy.read_text().replace("10000", "10001"))
    err = _refusal(bundle, data, tmp_path)
    assert err.code == Code.BUNDLE_HASH_MISMATCH and "bundle_hash" in err.detail


def test_catalog_change_under_old_initdata(bundle: Path, tmp_path: Path) -> None:
    data = render_initdata(bundle)
    catalog = json.loads((bundle / "catalog.json").read_text())
    catalog[1]["sensitivity_level"] = "public"  # downgrade PHI sensitivity
    (bundle / "catalog.json").write_text(json.dumps(catalog))
    err = _refusal(bundle, data, tmp_path)
    assert err.code == Code.BUNDLE_HASH_MISMATCH and "catalog_hash" in err.detail


def test_mode_in_initdata_differs_from_manifest(bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle)
    entry = initdata.CmcpEntry(bundle_hash=b.bundle_hash, catalog_hash=b.catalog_hash,
                               enforcement_mode="advisory", route="r", audience="a")
    err = _refusal(bundle, initdata.render(entry, image=IMAGE, command=COMMAND), tmp_path)
    assert err.code == Code.BUNDLE_HASH_MISMATCH and "enforcement_mode" in err.detail


def test_invalid_bundle_never_serves_even_when_measured(bundle: Path, tmp_path: Path) -> None:
    (bundle / "policies" / "bad.cedar").write_text(
        '@id("typo")\nforbid (principal, action, resource) when { resource.sensitivty == "x" };\n')
    err = _refusal(bundle, render_initdata(bundle), tmp_path)  # initdata names this exact bundle
    assert err.code == Code.BUNDLE_INVALID and "typo" in err.detail


def test_bundle_that_does_not_load(bundle: Path, tmp_path: Path) -> None:
    data = render_initdata(bundle)
    (bundle / "manifest.json").unlink()
    assert _refusal(bundle, data, tmp_path).code == Code.BUNDLE_INVALID


class _LyingProvider:
    """A TEE shim that returns a cached report instead of a fresh one."""

    name = "simulated"

    def __init__(self, inner: SimulatedProvider):
        self.inner = inner

    def report(self, report_data: bytes) -> Report:
        return replace(self.inner.report(report_data), report_data=bytes(64))


def test_stale_report_is_refused(bundle: Path, tmp_path: Path) -> None:
    data = render_initdata(bundle)
    path = tmp_path / "i.toml"
    path.write_bytes(data)
    provider = _LyingProvider(SimulatedProvider(initdata.tdx_mrconfigid(data).hex()))
    with pytest.raises(StartupError) as err:
        start(bundle_dir=bundle, initdata_path=path, provider=provider)
    assert err.value.code == Code.TEE_PROVIDER_FAILED


def test_providers_fail_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MRCONFIGID, raising=False)
    for tee, kwargs in (("simulated", {}), ("tdx", {"tsm_root": str(tmp_path / "nope")}),
                        ("sgx", {})):
        with pytest.raises(CmcpError) as err:
            make_provider(tee, **kwargs)
        assert err.value.code == Code.TEE_PROVIDER_FAILED
    monkeypatch.setenv(ENV_MRCONFIGID, "ab" * 10)
    with pytest.raises(CmcpError):
        make_provider("simulated")


def test_configfs_tsm_provider_reports_wrong_provider(tmp_path: Path) -> None:
    """A directory that is not a TDX configfs-tsm (no provider attribute) gives no evidence."""
    provider = ConfigfsTsmProvider("tdx", str(tmp_path), timeout_s=0.2)
    with pytest.raises(CmcpError) as err:
        provider.report(bytes(64))
    assert err.value.code == Code.TEE_PROVIDER_FAILED


# ---- evidence binding, checked by the verifier -------------------------------------------------


def test_simulated_quote_carries_initdata_digest_and_binding(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    nonce = os.urandom(32)
    report, report_data = enc.attest(nonce)
    quote = parse_quote(report.evidence)
    assert quote.body.mrconfigid == initdata.tdx_mrconfigid(enc.initdata_bytes)
    assert quote.body.report_data == report_data == enc.binding(nonce).report_data()
    verdict = appraise_response(attest_response(enc, nonce), nonce, SIMULATED,
                                expected_bundle_hash=enc.bundle_hash)
    assert verdict.passed, verdict.message
    assert verdict.key_thumbprint == enc.kid


def test_verifier_catches_wrong_nonce_key_bundle_and_initdata(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    other = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "o")
    nonce = os.urandom(32)
    good = attest_response(enc, nonce)
    assert not appraise_response(good, os.urandom(32), SIMULATED).passed  # replayed for another nonce
    wrong_key = attest_response(enc, nonce)
    wrong_key.public_key_jwk = json.dumps(public_jwk(other.public_key))
    assert not appraise_response(wrong_key, nonce, SIMULATED).passed
    wrong_bundle = attest_response(enc, nonce)
    wrong_bundle.bundle_hash = "sha256:" + "0" * 64
    assert not appraise_response(wrong_bundle, nonce, SIMULATED).passed
    wrong_initdata = attest_response(enc, nonce)
    wrong_initdata.initdata = render_initdata(EXAMPLES / "realistic", audience="urn:elsewhere")
    verdict = appraise_response(wrong_initdata, nonce, SIMULATED)
    assert not verdict.passed and verdict.code == Code.INITDATA_MISMATCH.value
    assert not appraise_response(good, nonce, SIMULATED, expected_bundle_hash="sha256:" + "1" * 64).passed
    assert not appraise_response(good, nonce).passed  # simulated only when explicitly allowed


def test_attest_rejects_bad_nonce(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    for nonce in (b"", b"short", bytes(65)):
        with pytest.raises(CmcpError):
            enc.attest(nonce)


# ---- the real process ---------------------------------------------------------------------------


def test_process_refuses_with_exit_3_and_json_code(bundle: Path, tmp_path: Path) -> None:
    measured = render_initdata(bundle, audience="urn:honest")
    with pytest.raises(EnclaveRefused) as err:
        start_enclave(bundle, tmp_path, initdata_bytes=render_initdata(bundle, audience="urn:x"),
                      measured_initdata=measured)
    assert (err.value.returncode, err.value.code) == (3, "INITDATA_MISMATCH")
    data = render_initdata(bundle)
    (bundle / "policies" / "base.cedar").write_text(
        (bundle / "policies" / "base.cedar").read_text() + "\n")
    with pytest.raises(EnclaveRefused) as err:
        start_enclave(bundle, tmp_path, initdata_bytes=data)
    assert (err.value.returncode, err.value.code) == (3, "BUNDLE_HASH_MISMATCH")


def test_process_without_launcher_measurement_refuses(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_MRCONFIGID}
    data = render_initdata(EXAMPLES / "minimal")
    init = tmp_path / "i.toml"
    init.write_bytes(data)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cmcp_enclave.main", "--bundle", str(EXAMPLES / "minimal"),
                           "--initdata", str(init), "--tee", "simulated", "--listen", "127.0.0.1:0"],
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 3
    last = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert last["error"] == "TEE_PROVIDER_FAILED"
    assert launcher_env(data)[ENV_MRCONFIGID] == initdata.tdx_mrconfigid(data).hex()


def test_bundle_signature_is_required_when_signers_are_configured(bundle: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cmcp_core.bundle import signing_payload
    from cmcp_core.digest import b64url
    from cmcp_ctl.main import main as cmcpctl

    signer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = render_initdata(bundle)
    path = tmp_path / "i.toml"
    path.write_bytes(data)

    def boot() -> object:
        provider = SimulatedProvider(initdata.tdx_mrconfigid(data).hex())
        return start(bundle_dir=bundle, initdata_path=path, provider=provider,
                     bundle_signers=[signer.public_key()])

    with pytest.raises(StartupError) as err:  # unsigned
        boot()
    assert err.value.code == Code.BUNDLE_INVALID and "signature" in err.value.detail
    manifest = json.loads((bundle / "manifest.json").read_text())
    bundle_hash = load_bundle(bundle).bundle_hash
    manifest["signature"] = b64url(stranger.sign(signing_payload(bundle_hash)))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StartupError):  # signed by someone else
        boot()
    manifest["signature"] = b64url(signer.sign(signing_payload(bundle_hash)))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle).bundle_hash == bundle_hash  # the signature is outside the hash
    boot()
    jwk = json.dumps(public_jwk(signer.public_key()))
    assert cmcpctl(["bundle", "validate", str(bundle), "--signer-key", jwk]) == 0
    other = json.dumps(public_jwk(stranger.public_key()))
    assert cmcpctl(["bundle", "validate", str(bundle), "--signer-key", other]) == 1
    assert "trusted signer" in capsys.readouterr().err
