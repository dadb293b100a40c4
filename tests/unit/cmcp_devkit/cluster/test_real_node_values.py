"""cmcp_devkit.cluster.real_node_values: the chart values that run its pods on the real node by digest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmcp_devkit import images
from cmcp_devkit.cluster import real_node_values
from cmcp_devkit.cluster.control_plane import REAL_NODE_PLACEMENT, RUNTIME_CLASSES
from cmcp_devkit.cluster.real_node_values import DEFAULT_TDX_RUNTIME_CLASS, chart_values, main
from cmcp_devkit.images import Built


def _built(name: str) -> Built:
    return Built(name, f"localhost/cmcp-{name}:0.1.0", f"sha256:{name[0] * 64}", 1, f"/a/cmcp-{name}.oci.tar")


IMAGES = {name: _built(name) for name in ("operator", "gateway", "enclave", "guard", "demo")}


def test_every_component_by_digest_from_the_nodes_own_store() -> None:
    values = chart_values(IMAGES)
    assert values["imageRegistry"] == "localhost"  # what the import named them: nothing is pulled
    for component in ("operator", "gateway", "enclave"):
        assert values[component]["image"] == {"repository": f"cmcp-{component}",
                                               "digest": IMAGES[component].digest}


def test_the_enclave_runs_its_real_tdx_provider_through_the_kata_tdx_handler() -> None:
    attestation = chart_values(IMAGES)["attestation"]
    # only what the real node changes: allowSimulated stays the simulated profile's (the stand-in's
    # evidence is software-only), and the provider follows spec.tee (no launcher variables)
    assert set(attestation) == {"allowedTeeTypes", "runtimeClasses"}
    assert attestation["allowedTeeTypes"] == ["tdx"]
    assert attestation["runtimeClasses"] == {"tdx": DEFAULT_TDX_RUNTIME_CLASS}
    assert DEFAULT_TDX_RUNTIME_CLASS in RUNTIME_CLASSES
    assert chart_values(IMAGES, "test-class")["attestation"]["runtimeClasses"] == {"tdx": "test-class"}


def test_operator_and_gateway_are_pinned_to_the_real_node_each_with_its_own_copy() -> None:
    values = chart_values(IMAGES)
    assert values["operator"]["nodeSelector"] == REAL_NODE_PLACEMENT["nodeSelector"]
    assert values["gateway"]["nodeSelector"] == REAL_NODE_PLACEMENT["nodeSelector"]
    assert "nodeSelector" not in values["enclave"]  # its RuntimeClass places it
    values["operator"]["nodeSelector"]["x"] = "y"
    assert "x" not in REAL_NODE_PLACEMENT["nodeSelector"] and "x" not in values["gateway"]["nodeSelector"]


def test_main_needs_a_real_node_then_imports_every_image_and_writes_the_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(real_node_values, "owner_pid", lambda: None)
    assert main([]) == 1
    assert "no real node runs here" in capsys.readouterr().err

    built = {n: images.Built(n, f"localhost/cmcp-{n}:0.1.0", "sha256:" + "ab" * 32, 1, f"/a/{n}.tar")
             for n in ("operator", "gateway", "enclave", "test-http-echo")}
    imported: list[Path] = []
    monkeypatch.setattr(real_node_values, "owner_pid", lambda: 4242)
    monkeypatch.setattr(images, "ensure_cluster_images", lambda: built)
    monkeypatch.setattr(real_node_values.Ctr, "import_archive", lambda self, a: imported.append(a) or [])
    out = tmp_path / "values.yaml"
    assert main([str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert imported == [Path(b.archive) for b in built.values()]
    values = yaml.safe_load(out.read_text())
    assert values["enclave"]["image"]["digest"] == "sha256:" + "ab" * 32

    def broken() -> dict[str, images.Built]:
        raise images.ImagesError("buildah is missing")

    monkeypatch.setattr(images, "ensure_cluster_images", broken)
    assert main([str(out)]) == 1
    assert "buildah is missing" in capsys.readouterr().err
