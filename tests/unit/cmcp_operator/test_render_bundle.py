"""``python -m cmcp_operator.render_bundle`` (:mod:`cmcp_operator.render_bundle`): a bundle
directory becomes a PolicyBundle manifest carrying exactly the files the bundle hash covers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmcp_core.bundle import BundleError, load_bundle, read_bundle_files
from cmcp_operator import bundles
from cmcp_operator.render_bundle import bundle_manifest, dump, main
from tests.paths import EXAMPLES

EXAMPLE = EXAMPLES / "minimal"


@pytest.fixture
def files() -> dict[str, str]:
    return read_bundle_files(EXAMPLE)


def test_render_bundle_manifest_roundtrips(files: dict[str, str]) -> None:
    import yaml

    doc = yaml.safe_load(dump(bundle_manifest(EXAMPLE, "minimal", "demo")))
    assert doc["kind"] == "PolicyBundle" and doc["metadata"] == {"name": "minimal", "namespace": "demo"}
    assert doc["spec"]["files"] == files


def test_rendered_manifest_hashes_like_the_directory(files: dict[str, str]) -> None:
    """What the operator analyses from the manifest is the bundle the directory is."""
    doc = yaml.safe_load(dump(bundle_manifest(EXAMPLE, "minimal")))
    assert "namespace" not in doc["metadata"]
    analysis = bundles.analyse(doc["spec"])
    assert analysis.valid and analysis.bundle is not None
    assert analysis.bundle.bundle_hash == load_bundle(EXAMPLE).bundle_hash


def test_extra_spec_fields_and_only_hashed_files(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    (bundle / "policies").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}\n")
    (bundle / "policies" / "a.cedar").write_text("permit(principal, action, resource);\n")
    (bundle / "README.md").write_text("not part of the bundle\n")
    doc = bundle_manifest(bundle, "b", signature="sig")
    assert set(doc["spec"]["files"]) == {"manifest.json", "policies/a.cedar"}
    assert doc["spec"]["signature"] == "sig"


def test_awkward_text_survives_the_yaml_round_trip(tmp_path: Path) -> None:
    """Block literals for readable policies; trailing spaces and CR fall back to quoted strings."""
    texts = {"a.cedar": "permit(principal, action, resource);\n// two\n",
             "b.cedar": "forbid(principal, action, resource); \nx \n",
             "c.cedar": "line\r\nnext\r\n", "d.cedar": "ends with space ",
             "e.cedar": "ünïcode — ok\n"}
    doc = {"apiVersion": "v", "kind": "PolicyBundle", "metadata": {"name": "x"},
           "spec": {"files": dict(texts)}}
    text = dump(doc)
    assert "a.cedar: |" in text  # multi-line policy is a block literal
    assert yaml.safe_load(text)["spec"]["files"] == texts


def test_cli_names_the_manifest_after_the_directory(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "My_Bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}\n")
    main([str(bundle), "-n", "team"])
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["metadata"] == {"name": "my-bundle", "namespace": "team"}
    main([str(bundle), "--name", "explicit"])
    assert yaml.safe_load(capsys.readouterr().out)["metadata"] == {"name": "explicit"}


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "the following arguments are required: directory" in capsys.readouterr().err
    with pytest.raises(BundleError) as err:
        main([str(tmp_path / "absent")])
    assert err.value.code == "BUNDLE_FILE_MISSING"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.cedar").write_bytes(b"\xff\xfe")
    with pytest.raises(BundleError) as err:
        bundle_manifest(tmp_path / "bad", "bad")
    assert err.value.file == "x.cedar"
