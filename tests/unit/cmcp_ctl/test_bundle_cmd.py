"""``cmcpctl bundle validate``: warnings go to stderr and keep exit 0; ``--strict`` fails on them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.identity import IdentityPolicy
from cmcp_core.validation import validate_bundle
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.issuer import DevIssuer, serving
from cmcp_devkit.ports import free_port
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


def _copy(tmp_path: Path) -> Path:
    bundle = tmp_path / "idb"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    return bundle


def test_trust_issuer_inlines_a_jwks_file_and_the_bundle_validates(tmp_path: Path) -> None:
    issuer = DevIssuer("https://kubernetes.default.svc.cluster.local")
    bundle, jwks = _copy(tmp_path), tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    before = load_bundle(bundle).bundle_hash
    args = ["bundle", "trust-issuer", str(bundle), "--issuer", issuer.issuer, "--jwks", str(jwks),
            "--audience", "https://gw.example/mcp/a", "--algorithm", "RS256"]
    assert cmcpctl(args) == 0
    loaded = load_bundle(bundle)
    assert loaded.bundle_hash != before and not validate_bundle(loaded)
    policy = IdentityPolicy.from_manifest(loaded.manifest)
    assert policy is not None
    token = issuer.token("system:serviceaccount:apps:agent", audience="https://gw.example/mcp/a")
    assert policy.verify(token, time.time()).principal == "system:serviceaccount:apps:agent"
    # again, with a second audience: the issuer is replaced, not listed twice
    assert cmcpctl([*args[:-4], "--audience", "https://gw.example/mcp/b", "--pin"]) == 0
    section = json.loads((bundle / "manifest.json").read_text())["identity"]
    assert section["audiences"] == ["https://gw.example/mcp/a", "https://gw.example/mcp/b"]
    assert [i["key_thumbprints"] for i in section["issuers"]] == [[issuer.thumbprint]]


def test_trust_issuer_discovers_a_served_oidc_issuer(tmp_path: Path) -> None:
    issuer = DevIssuer(f"http://127.0.0.1:{free_port()}", alg="ES256")
    bundle = _copy(tmp_path)
    with serving(issuer):
        assert cmcpctl(["bundle", "trust-issuer", str(bundle), "--issuer", issuer.issuer, "--discover",
                        "--audience", "https://gw.example/mcp/a"]) == 0
        # discovery that names another issuer is refused, and nothing is written
        before = (bundle / "manifest.json").read_text()
        assert cmcpctl(["bundle", "trust-issuer", str(bundle), "--issuer", issuer.issuer + "/",
                        "--discover", "--audience", "https://gw.example/mcp/a"]) == 1
        assert (bundle / "manifest.json").read_text() == before
    policy = IdentityPolicy.from_manifest(load_bundle(bundle).manifest)
    assert policy is not None
    token = issuer.token("bob", audience="https://gw.example/mcp/a")
    assert policy.verify(token, time.time()).principal == "bob"


def test_trust_issuer_refuses_keys_the_enclave_would_refuse(tmp_path: Path) -> None:
    bundle, jwks = _copy(tmp_path), tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    before = (bundle / "manifest.json").read_text()
    assert cmcpctl(["bundle", "trust-issuer", str(bundle), "--issuer", "https://i", "--jwks", str(jwks),
                    "--audience", "https://gw.example/mcp/a"]) == 1
    assert (bundle / "manifest.json").read_text() == before
