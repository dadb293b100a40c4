"""bundle_hash / catalog_hash: the origin's value, stability, CRLF normalisation, sensitivity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_ctl.main import main as cmcpctl
from tests.paths import DATA as TEST_DATA
from tests.paths import EXAMPLES

DATA = TEST_DATA / "bundles"
ORIGIN = DATA / "origin-minimal"
ORIGIN_HASH = "sha256:0f30eae7f46868c8250b1b78be3bfd0cd25b247c0c110271ebd599e7aa5a0e74"
REALISTIC = EXAMPLES / "realistic"


def test_origin_minimal_hash_matches_origin_tool(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_bundle(ORIGIN).bundle_hash == ORIGIN_HASH
    assert cmcpctl(["bundle", "hash", str(ORIGIN)]) == 0
    assert capsys.readouterr().out.strip() == ORIGIN_HASH


def test_hash_is_stable_across_loads_and_copies(tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(REALISTIC, copy)
    assert load_bundle(copy).bundle_hash == load_bundle(REALISTIC).bundle_hash
    assert load_bundle(copy).catalog_hash == load_bundle(REALISTIC).catalog_hash


def test_a_kubelet_configmap_volume_loads_as_the_bundle_it_shows(tmp_path: Path) -> None:
    """The kubelet's atomic writer keeps the files in ``..<timestamp>/`` behind ``..data`` and
    shows them as symlinks: only the visible view counts, not the second copy."""
    volume = tmp_path / "bundle"
    stamp = volume / "..2026_12_05_19_14_44.1"
    shutil.copytree(REALISTIC, stamp)
    (volume / "..data").symlink_to(stamp.name)
    for entry in sorted(REALISTIC.iterdir()):
        (volume / entry.name).symlink_to(f"..data/{entry.name}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "extra.cedar").write_text("permit (principal, action, resource);\n")
    (volume / "outside").symlink_to(elsewhere)  # a link out of the volume is not followed
    assert load_bundle(volume).bundle_hash == load_bundle(REALISTIC).bundle_hash


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_normalise_to_the_same_hash(tmp_path: Path, newline: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(ORIGIN, copy)
    for name in ("allow-all.cedar", "schema.cedarschema"):
        path = copy / name
        text = path.read_text().replace("\n", newline)
        path.write_bytes(text.encode())
        assert newline.encode() in path.read_bytes()
    assert load_bundle(copy).bundle_hash == ORIGIN_HASH


def test_one_byte_change_in_any_policy_changes_hash(tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(REALISTIC, copy)
    before = load_bundle(copy).bundle_hash
    policy = copy / "policies" / "arguments.cedar"
    policy.write_text(policy.read_text().replace("10000", "10001"))
    assert load_bundle(copy).bundle_hash != before


def test_manifest_change_changes_hash_but_signature_does_not(tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(ORIGIN, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["signature"] = "AAAA"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).bundle_hash == ORIGIN_HASH  # signature is not hashed
    manifest["commit_sha"] = "other"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(copy).bundle_hash != ORIGIN_HASH


def test_catalog_hash_ignores_entry_order_but_not_content(tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(REALISTIC, copy)
    base = load_bundle(copy).catalog_hash
    catalog = json.loads((copy / "catalog.json").read_text())
    (copy / "catalog.json").write_text(json.dumps(list(reversed(catalog)), ensure_ascii=True))
    assert load_bundle(copy).catalog_hash == base  # order and escaping do not matter (JCS)
    catalog[0]["sensitivity_level"] = "public"
    (copy / "catalog.json").write_text(json.dumps(catalog))
    assert load_bundle(copy).catalog_hash != base
    # the catalog is not part of bundle_hash; initdata pins it separately as catalog_hash
    assert load_bundle(copy).bundle_hash == load_bundle(REALISTIC).bundle_hash


def test_non_ascii_tool_names_hash_as_utf8(tmp_path: Path) -> None:
    bundle = load_bundle(REALISTIC)
    assert "résumé.parse" in bundle.catalog_by_tool()
    copy = tmp_path / "b"
    shutil.copytree(REALISTIC, copy)
    catalog = json.loads((copy / "catalog.json").read_text())
    (copy / "catalog.json").write_text(json.dumps(catalog, ensure_ascii=True))  # \u escapes
    assert load_bundle(copy).catalog_hash == bundle.catalog_hash
