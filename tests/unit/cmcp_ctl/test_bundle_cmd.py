"""``cmcpctl bundle validate``: warnings go to stderr and keep exit 0; ``--strict`` fails on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmcp_ctl.main import main as cmcpctl
from tests.paths import EXAMPLES

SUFFIX_RULE = """@id("mail-suffix")
forbid (principal, action == cMCP::Action::"call_tool", resource)
when {
  resource.name == "email.send_external" &&
  !(context.arguments has subject && context.arguments.subject like "*@partner.example")
};
"""


@pytest.fixture
def suffix_bundle(tmp_path: Path) -> Path:
    """examples/realistic plus a valid rule that matches a suffix of free text."""
    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    (bundle / "policies" / "suffix.cedar").write_text(SUFFIX_RULE)
    return bundle


def test_warning_names_file_policy_and_pattern_on_stderr_exit_0(
        suffix_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(["bundle", "validate", str(suffix_bundle)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("valid sha256:")
    [line] = err.splitlines()
    assert line.startswith("warning: policies/suffix.cedar [mail-suffix]: ")
    assert '`context.arguments.subject like "*@partner.example"`' in line


def test_strict_turns_a_warning_into_exit_1(suffix_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(["bundle", "validate", "--strict", str(suffix_bundle)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "warning: policies/suffix.cedar [mail-suffix]" in err


@pytest.mark.parametrize(("strict", "rc"), [([], 0), (["--strict"], 1)])
def test_json_lists_warnings_and_strict_marks_invalid(
        suffix_bundle: Path, capsys: pytest.CaptureFixture[str], strict: list[str], rc: int) -> None:
    assert cmcpctl(["bundle", "validate", "--json", *strict, str(suffix_bundle)]) == rc
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is (rc == 0) and doc["errors"] == []
    warned = [(w["file"], w["policy_id"]) for w in doc["warnings"]]
    assert warned == [("policies/suffix.cedar", "mail-suffix")]


@pytest.mark.parametrize("bundle", ["minimal", "realistic", "advisory"])
def test_shipped_examples_pass_strict(bundle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(["bundle", "validate", "--strict", str(EXAMPLES / bundle)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("valid sha256:") and err == ""


def test_errors_still_fail_without_strict(suffix_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (suffix_bundle / "policies" / "bad.cedar").write_text(
        '@id("bad")\nforbid (principal, action, resource) when { context.arguments.nope == 1 };\n')
    assert cmcpctl(["bundle", "validate", str(suffix_bundle)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "policies/bad.cedar [bad]" in err and "warning: policies/suffix.cedar" in err
