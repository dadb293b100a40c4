"""The appraisal settings every relying party shares: no manifest, or a bad one, stops start-up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cmcp_core import appraisal_options
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.release import write_dev_release


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relying-party")
    appraisal_options.add_arguments(parser)
    return parser


def _from_argv(argv: list[str]) -> object:
    parser = _parser()
    return appraisal_options.from_args(parser.parse_args(argv), parser)


def test_flags_build_a_policy_with_the_verified_release(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path)
    policy = appraisal_options.from_args(
        _parser().parse_args([*dev.argv(), "--allow-simulated", "--tdx-collateral-dir", "/var/cache/tdx",
                              "--pccs-url", "https://pccs.example/"]), _parser())
    assert policy.releases == (dev.release,)
    assert policy.allow_simulated and policy.collateral_dir == "/var/cache/tdx"
    assert policy.pccs_url == "https://pccs.example/"


def test_no_manifest_is_a_usage_error_naming_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _from_argv(["--allow-simulated"])
    assert exit_.value.code == 2
    assert "REFERENCE_VALUES_MISSING" in capsys.readouterr().err


def test_a_manifest_signed_by_another_key_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours, theirs = write_dev_release(tmp_path / "a"), write_dev_release(tmp_path / "b")
    with pytest.raises(SystemExit):
        _from_argv(["--release-manifest", str(theirs.manifest), "--release-key", str(ours.key)])
    assert "RELEASE_MANIFEST_INVALID" in capsys.readouterr().err


def test_config_file_keys_spell_the_same_settings(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path)
    policy = appraisal_options.from_mapping({"release": dev.config(), "allow_simulated": True,
                                             "tdx_collateral_dir": "/c", "pccs_url": "https://p/"})
    assert policy.releases == (dev.release,) and policy.allow_simulated
    assert (policy.collateral_dir, policy.pccs_url) == ("/c", "https://p/")
    with pytest.raises(CmcpError) as err:
        appraisal_options.from_mapping({"allow_simulated": True})
    assert err.value.code is Code.REFERENCE_VALUES_MISSING
