"""Every validation error path names the file and the policy, and ``bundle validate`` fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmcp_core.bundle import BundleError, load_bundle
from cmcp_core.validation import (
    MAX_ARGUMENT_BYTES,
    argument_limit,
    request_model,
    state_window_seconds,
    validate_bundle,
)
from cmcp_ctl.main import main as cmcpctl
from tests.paths import EXAMPLES, ROOT

REALISTIC = EXAMPLES / "realistic"
ORIGIN = ROOT / "tests" / "data" / "bundles" / "origin-minimal"


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(REALISTIC, copy)
    return copy


def _issues(path: Path) -> list[tuple[str, str, str]]:
    return [(i.file, i.policy_id, i.message) for i in validate_bundle(load_bundle(path))]


@pytest.mark.parametrize("bundle", ["minimal", "realistic", "advisory"])
def test_examples_are_valid(bundle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_bundle(load_bundle(EXAMPLES / bundle)) == []
    assert cmcpctl(["bundle", "validate", str(EXAMPLES / bundle)]) == 0
    assert capsys.readouterr().out.startswith("valid sha256:")


def test_origin_bundle_is_valid_and_uses_phase1_model() -> None:
    bundle = load_bundle(ORIGIN)
    assert validate_bundle(bundle) == []
    assert request_model(bundle) == "phase1"
    assert request_model(load_bundle(REALISTIC)) == "native"


def test_type_error_names_file_and_annotated_policy(bundle_dir: Path) -> None:
    (bundle_dir / "policies" / "bad.cedar").write_text(
        '@id("uses-unknown-attr")\nforbid (principal, action, resource) when { resource.owner == "x" };\n')
    issues = _issues(bundle_dir)
    assert issues and all(f == "policies/bad.cedar" and p == "uses-unknown-attr" for f, p, _ in issues)
    assert any("owner" in m for _, _, m in issues)


def test_unannotated_policy_gets_positional_id_within_its_file(bundle_dir: Path) -> None:
    (bundle_dir / "policies" / "bad.cedar").write_text(
        "permit (principal, action, resource);\n"
        "forbid (principal, action, resource) when { context.arguments.amount > 1 };\n")
    issues = _issues(bundle_dir)
    assert {(f, p) for f, p, _ in issues} == {("policies/bad.cedar", "policy1")}
    assert "optional attribute" in issues[0][2]


def test_parse_error_names_file(bundle_dir: Path) -> None:
    (bundle_dir / "policies" / "broken.cedar").write_text("permit (principal, action, resource) when {")
    issues = _issues(bundle_dir)
    assert [(f, p) for f, p, _ in issues] == [("policies/broken.cedar", "")]
    assert "parse error" in issues[0][2]


def test_unknown_action_is_reported(bundle_dir: Path) -> None:
    (bundle_dir / "policies" / "bad.cedar").write_text(
        '@id("wrong-action")\npermit (principal, action == cMCP::Action::"delete_all", resource);\n')
    issues = _issues(bundle_dir)
    assert issues and issues[0][:2] == ("policies/bad.cedar", "wrong-action")
    assert any("delete_all" in m for _, _, m in issues)


def test_schema_that_does_not_parse(bundle_dir: Path) -> None:
    (bundle_dir / "schema.cedarschema").write_text("namespace cMCP { entity ")
    issues = _issues(bundle_dir)
    assert [(f, p) for f, p, _ in issues] == [("schema.cedarschema", "")]


def test_empty_policy_file_and_duplicate_ids(bundle_dir: Path) -> None:
    (bundle_dir / "policies" / "empty.cedar").write_text("// nothing here\n")
    (bundle_dir / "policies" / "dup.cedar").write_text(
        '@id("transfer-limit")\npermit (principal, action, resource);\n')
    issues = _issues(bundle_dir)
    assert ("policies/empty.cedar", "", "file holds no policy") in issues
    assert any(f == "policies/dup.cedar" and p == "transfer-limit" and "also used" in m
               for f, p, m in issues)


def test_catalog_label_not_in_levels(bundle_dir: Path) -> None:
    catalog = json.loads((bundle_dir / "catalog.json").read_text())
    catalog[0]["sensitivity_level"] = "top-secret"
    (bundle_dir / "catalog.json").write_text(json.dumps(catalog))
    issues = _issues(bundle_dir)
    assert [(f, p) for f, p, _ in issues] == [("catalog.json", "")]
    assert "top-secret" in issues[0][2]


def test_unknown_request_model(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["request_model"] = "phase9"
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert any(f == "manifest.json" and "phase9" in m for f, _, m in _issues(bundle_dir))


@pytest.mark.parametrize("breakage", ["no-manifest", "bad-json", "bad-mode", "no-policies", "dup-tool"])
def test_structural_errors_fail_the_cli(bundle_dir: Path, breakage: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    if breakage == "no-manifest":
        (bundle_dir / "manifest.json").unlink()
    elif breakage == "bad-json":
        (bundle_dir / "catalog.json").write_text("[{")
    elif breakage == "bad-mode":
        (bundle_dir / "manifest.json").write_text(json.dumps({
            "version": "1", "authored_at": "x", "author_identity": "y", "commit_sha": "z",
            "enforcement_mode": "yolo"}))
    elif breakage == "no-policies":
        shutil.rmtree(bundle_dir / "policies")
    else:
        catalog = json.loads((bundle_dir / "catalog.json").read_text())
        (bundle_dir / "catalog.json").write_text(json.dumps([*catalog, catalog[0]]))
    with pytest.raises(BundleError):
        load_bundle(bundle_dir)
    assert cmcpctl(["bundle", "validate", "--json", str(bundle_dir)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and out["errors"][0]["message"]


def test_cli_reports_every_error_with_file_and_policy(bundle_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (bundle_dir / "policies" / "a.cedar").write_text(
        '@id("a1")\nforbid (principal, action, resource) when { resource.nope };\n')
    (bundle_dir / "policies" / "b.cedar").write_text(
        '@id("b1")\nforbid (principal, action, resource) when { context.nope };\n')
    assert cmcpctl(["bundle", "validate", str(bundle_dir)]) == 1
    err = capsys.readouterr().err
    assert "policies/a.cedar [a1]:" in err and "policies/b.cedar [b1]:" in err


def test_templates_are_refused(bundle_dir: Path) -> None:
    (bundle_dir / "policies" / "tpl.cedar").write_text(
        "permit (principal == ?principal, action, resource);\n")
    issues = _issues(bundle_dir)
    assert [(f, p) for f, p, _ in issues] == [("policies/tpl.cedar", "")]
    assert "template" in issues[0][2]


def test_schema_without_the_cmcp_namespace(bundle_dir: Path) -> None:
    schema = (bundle_dir / "schema.cedarschema").read_text().replace("namespace cMCP", "namespace Other")
    (bundle_dir / "schema.cedarschema").write_text(schema)
    for policy in (bundle_dir / "policies").glob("*.cedar"):
        policy.write_text(policy.read_text().replace("cMCP::", "Other::"))
    issues = _issues(bundle_dir)
    assert [(f, p) for f, p, _ in issues] == [("schema.cedarschema", "")]
    assert "namespace cMCP" in issues[0][2]


@pytest.mark.parametrize("window", [0, -5, 31 * 24 * 3600 + 1, "86400", True, 1.5])
def test_a_bad_state_window_is_reported(bundle_dir: Path, window: object) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["state_window_seconds"] = window
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert any("state_window_seconds" in message for _, _, message in _issues(bundle_dir))


def test_the_state_window_defaults_to_a_day_and_takes_the_manifests_value(bundle_dir: Path) -> None:
    assert state_window_seconds(load_bundle(bundle_dir)) == 86400
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["state_window_seconds"] = 3600
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert state_window_seconds(load_bundle(bundle_dir)) == 3600 and not _issues(bundle_dir)


@pytest.mark.parametrize("bound", [0, 1, 256 * 1024 + 1, "4096", True, 2.5])
def test_a_bad_argument_bound_is_reported(bundle_dir: Path, bound: object) -> None:
    catalog = json.loads((bundle_dir / "catalog.json").read_text())
    catalog[0]["max_argument_bytes"] = bound
    (bundle_dir / "catalog.json").write_text(json.dumps(catalog))
    assert any("max_argument_bytes" in message for _, _, message in _issues(bundle_dir))


def test_the_argument_bound_defaults_to_the_ceiling_and_takes_the_catalogs_value() -> None:
    assert argument_limit({"tool_name": "t"}) == MAX_ARGUMENT_BYTES == 256 * 1024
    assert argument_limit({"tool_name": "t", "max_argument_bytes": 512}) == 512
    assert argument_limit({"tool_name": "t", "max_argument_bytes": "512"}) == MAX_ARGUMENT_BYTES
