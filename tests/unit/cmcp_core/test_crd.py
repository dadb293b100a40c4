"""The CRD constants in ``cmcp_core.crd`` name exactly the resources that ``crds/*.yaml`` define."""

from __future__ import annotations

import yaml

from cmcp_core import crd
from tests.paths import ROOT


def _crd(plural: str) -> dict:
    return yaml.safe_load((ROOT / "crds" / f"{plural}.{crd.GROUP}.yaml").read_text(encoding="utf-8"))


def test_api_version_and_path_are_built_from_group_and_version() -> None:
    assert f"{crd.GROUP}/{crd.VERSION}" == crd.API_VERSION
    assert f"/apis/{crd.API_VERSION}" == crd.API_PATH


def test_each_plural_matches_its_crd_file() -> None:
    for plural in (crd.BUNDLE_PLURAL, crd.ROUTE_PLURAL):
        doc = _crd(plural)
        assert doc["kind"] == "CustomResourceDefinition"
        assert doc["spec"]["group"] == crd.GROUP
        assert doc["spec"]["names"]["plural"] == plural
        assert doc["metadata"]["name"] == f"{plural}.{crd.GROUP}"
        assert crd.VERSION in [v["name"] for v in doc["spec"]["versions"] if v.get("served")]
