"""``cmcp_enclave.main``: the ``cmcp-enclave`` command line, its usage errors (exit 2) and
start-up refusals (exit 3, one JSON line naming the code). Serving is covered by the process
tests (tests/unit/cmcp_enclave/test_startup.py, tests/integration/test_enclave_process.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.crypto import public_jwk
from cmcp_devkit.enclave import render_initdata
from cmcp_enclave.main import EXIT_REFUSED, TEES, build_parser, main
from cmcp_enclave.simulated import ENV_MRCONFIGID, launcher_env
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "minimal"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("CMCP_BUNDLE", "CMCP_INITDATA", "CMCP_TEE", "CMCP_LISTEN", "CMCP_READY_FILE",
                 "CMCP_GPU", ENV_MRCONFIGID):
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("cmcp")  # main() installs the JSON handler: put the logger back
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def initdata_file(tmp_path: Path) -> Path:
    path = tmp_path / "initdata.toml"
    path.write_bytes(render_initdata(BUNDLE))
    return path


def _args(initdata_file: Path, *extra: str) -> list[str]:
    return ["--bundle", str(BUNDLE), "--initdata", str(initdata_file), "--tee", "simulated",
            "--listen", "127.0.0.1:0", *extra]


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cmcp-enclave")
    for option in ("--bundle", "--initdata", "--tee", "--listen", "--ready-file", "--bundle-signer"):
        assert option in out


def test_unknown_tee_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--tee", "sgx"])
    assert info.value.code == 2
    assert "invalid choice: 'sgx'" in capsys.readouterr().err


def test_missing_required_inputs_exit_2_naming_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tee", "simulated"]) == 2
    assert "missing --bundle, --initdata (or --initdata-annotation)" in capsys.readouterr().err


def test_the_annotation_flag_wins_over_a_launchers_initdata_variable(
    initdata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A launcher's CMCP_INITDATA (a host-process launcher may set one) must not replace the pinned flag."""
    monkeypatch.setenv("CMCP_INITDATA", str(initdata_file))
    for name, value in launcher_env(initdata_file.read_bytes()).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "cc_init_data").write_text("not base64!")
    args = ["--bundle", str(BUNDLE), "--initdata-annotation", str(tmp_path / "cc_init_data"),
            "--tee", "simulated"]
    assert main(args) == EXIT_REFUSED
    assert "not base64 of gzip" in capsys.readouterr().err


def test_initdata_and_its_annotation_are_exclusive(initdata_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(initdata_file, "--initdata-annotation", str(initdata_file))) == 2
    assert "not both" in capsys.readouterr().err


def test_environment_supplies_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCP_BUNDLE", "/b")
    monkeypatch.setenv("CMCP_TEE", "snp")
    monkeypatch.setenv("CMCP_LISTEN", "0.0.0.0:1")
    args = build_parser().parse_args([])
    assert (args.bundle, args.tee, args.listen) == ("/b", "snp", "0.0.0.0:1")
    assert build_parser().parse_args(["--tee", "tdx"]).tee == "tdx"  # a flag beats the environment
    assert set(TEES) == {"simulated", "tdx", "snp", "coco-aa"}


@pytest.mark.parametrize("key", ['{"kty": "RSA"}', "{not json", "/nonexistent/key.jwk"])
def test_bad_operator_key_is_a_usage_error(
    key: str, initdata_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(initdata_file, "--operator-key", key)) == 2
    assert "bad --operator-key/--bundle-signer" in capsys.readouterr().err


def _refusal(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc: dict[str, str] = json.loads(line)
    assert doc["event"] == "refused" and doc["component"] == "cmcp-enclave"
    return doc


def test_no_launcher_measurement_refuses_with_tee_provider_failed(
    initdata_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(initdata_file)) == EXIT_REFUSED == 3
    assert _refusal(capsys)["error"] == "TEE_PROVIDER_FAILED"


def test_an_nvidia_gpu_that_is_not_there_refuses_to_start(
    initdata_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No GPU on this machine: --gpu nvidia never serves CPU evidence alone."""
    for name, value in launcher_env(render_initdata(BUNDLE)).items():
        monkeypatch.setenv(name, value)  # an honest launcher: only the GPU is missing
    assert main(_args(initdata_file, "--gpu", "nvidia")) == EXIT_REFUSED
    refusal = _refusal(capsys)
    assert refusal["error"] == "TEE_PROVIDER_FAILED" and "NVML" in refusal["detail"]
    monkeypatch.setenv("CMCP_GPU", "simulated")
    assert build_parser().parse_args([]).gpu == "simulated"
    assert build_parser().parse_args(["--gpu", "none"]).gpu == "none"


def test_initdata_other_than_measured_refuses(
    initdata_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in launcher_env(render_initdata(EXAMPLES / "realistic")).items():
        monkeypatch.setenv(name, value)  # an honest launcher, but it measured other initdata
    assert main(_args(initdata_file)) == EXIT_REFUSED
    assert _refusal(capsys)["error"] == "INITDATA_MISMATCH"


def test_unsigned_bundle_refused_when_a_signer_is_required(
    initdata_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in launcher_env(initdata_file.read_bytes()).items():
        monkeypatch.setenv(name, value)
    signer = json.dumps(public_jwk(Ed25519PrivateKey.generate().public_key()))
    assert main(_args(initdata_file, "--bundle-signer", signer)) == EXIT_REFUSED
    assert _refusal(capsys)["error"] == "BUNDLE_INVALID"
