"""The conformance bundle: valid, reproducible, and carrying the facts the suite's expectations need.

The suite's checks assume the route serves this bundle: the allowed tool is allowed, the denied
tool is forbidden, the taint rule fires after a PHI read, the uncatalogued tool is absent and a
non-ASCII name is present. The decisions are taken by a real in-process enclave (real Cedar).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmcp_conformance import bundle as conformance_bundle
from cmcp_conformance.bundle import write as write_bundle
from cmcp_conformance.target import Profile
from cmcp_core.bundle import load_bundle
from cmcp_core.validation import validate_bundle
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide


def test_conformance_bundle_is_valid_and_stable(tmp_path: Path) -> None:
    enforce = load_bundle(write_bundle(tmp_path / "a"))
    again = load_bundle(write_bundle(tmp_path / "b"))
    advisory = load_bundle(write_bundle(tmp_path / "c", mode="advisory"))
    assert validate_bundle(enforce) == [] and validate_bundle(advisory) == []
    assert enforce.bundle_hash == again.bundle_hash != advisory.bundle_hash
    assert "shadow_tool" not in enforce.catalog_by_tool(), (
        "the uncatalogued tool must stay out of the catalog"
    )
    assert any(not name.isascii() for name in enforce.catalog_by_tool())



def test_files_are_the_bundle_layout_and_mode_goes_into_the_manifest() -> None:
    files = conformance_bundle.files()
    assert set(files) == {"manifest.json", "schema.cedarschema", "catalog.json",
                          "policies/allow.cedar", "policies/forbid.cedar"}
    assert json.loads(files["manifest.json"])["enforcement_mode"] == "enforce"
    assert json.loads(conformance_bundle.files(mode="advisory")["manifest.json"])["enforcement_mode"] == (
        "advisory")
    assert files == conformance_bundle.files(), "generated from code: the same bytes every time"


def test_write_returns_the_directory_with_exactly_those_files(tmp_path: Path) -> None:
    out = write_bundle(tmp_path / "nested" / "bundle")
    assert out == tmp_path / "nested" / "bundle"
    written = {str(p.relative_to(out)): p.read_text(encoding="utf-8") for p in out.rglob("*") if p.is_file()}
    assert written == conformance_bundle.files()


def test_catalog_follows_the_profile() -> None:
    profile = Profile(allowed_tool="ping", denied_tool="wipe", phi_tool="chart", external_tool="fax",
                      non_ascii_tool="grüße", uncatalogued_tool="hidden", resource="notes://a",
                      uncatalogued_resource="notes://b", prompt="hello")
    catalog = conformance_bundle.catalog(profile)
    entries = {e["tool_name"]: e for e in catalog if "tool_name" in e}
    assert set(entries) == {"ping", "wipe", "chart", "fax", "grüße"}
    assert [e.get("resource_uri") or e.get("prompt_name") for e in catalog if "tool_name" not in e] == [
        "notes://a", "hello"]
    assert entries["chart"]["compliance_domain"] == "PHI" and entries["chart"]["sensitivity_level"] == (
        "restricted")
    assert entries["fax"]["destination"] == "external"
    assert all(e["destination"] == "internal" for name, e in entries.items() if name != "fax")
    assert 'cMCP::Tool::"wipe"' in conformance_bundle.files(profile)["policies/forbid.cedar"]


@pytest.fixture(scope="module")
def conformance_enclave(tmp_path_factory: pytest.TempPathFactory) -> Enclave:
    work = tmp_path_factory.mktemp("conformance-bundle")
    return inprocess_enclave(write_bundle(work / "bundle"), work)


def test_a_real_enclave_decides_as_the_suite_expects(conformance_enclave: Enclave) -> None:
    enc = conformance_enclave
    p = Profile()
    allowed = decide(enc, p.allowed_tool, {"text": "hi"}, session="a")
    assert allowed.document["decision"] == "allow"
    denied = decide(enc, p.denied_tool, {"text": "x"}, session="a")
    assert (denied.document["decision"], denied.document["reason_code"]) == ("deny", "POLICY_DENY")
    assert denied.document["policy_ids"] == ["policies/forbid.cedar#forbid-delete"]
    lire = decide(enc, p.non_ascii_tool, {"text": "é"}, session="a")
    assert lire.document["decision"] == "allow"
    shadow = decide(enc, p.uncatalogued_tool, {"text": "x"}, session="a")
    assert (shadow.document["decision"], shadow.document["reason_code"]) == ("deny", "TOOL_NOT_IN_CATALOG")


def test_the_taint_rule_forbids_external_mail_only_after_phi(conformance_enclave: Enclave) -> None:
    enc, p = conformance_enclave, Profile()
    mail = {"to": "x@example.org", "body": "b"}
    assert decide(enc, p.external_tool, mail, session="t").document["decision"] == "allow"
    assert decide(enc, p.phi_tool, {"patient_id": "p1"}, session="t").document["decision"] == "allow"
    after = decide(enc, p.external_tool, mail, session="t")
    assert after.document["decision"] == "deny"
    assert after.document["policy_ids"] == ["policies/forbid.cedar#no-external-after-phi"]
