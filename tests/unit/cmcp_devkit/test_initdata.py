"""cmcp_devkit.initdata: the product's initdata renderer with the dev kit's defaults."""

from __future__ import annotations

import tomllib

from cmcp_core import initdata
from cmcp_devkit.initdata import (
    DEFAULT_AUDIENCE,
    DEFAULT_ROUTE,
    ENCLAVE_COMMAND,
    TEST_IMAGE,
    render_initdata,
)
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "realistic"


def test_defaults_are_the_product_renderer_with_the_dev_kit_values() -> None:
    expected = initdata.render_for_bundle(BUNDLE, route=DEFAULT_ROUTE, audience=DEFAULT_AUDIENCE,
                                          image=TEST_IMAGE, command=list(ENCLAVE_COMMAND),
                                          algorithm="sha384")
    assert render_initdata(BUNDLE) == expected


def test_test_image_is_pinned_by_digest() -> None:
    name, _, digest = TEST_IMAGE.partition("@sha256:")
    assert name and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def test_parameters_reach_the_rendered_document() -> None:
    default = render_initdata(BUNDLE)
    other = render_initdata(BUNDLE, audience="urn:other", route="ns/other")
    assert other != default
    text = other.decode()
    assert "urn:other" in text and "ns/other" in text
    assert DEFAULT_AUDIENCE not in text


def test_rendering_is_deterministic_and_valid_toml() -> None:
    first, second = render_initdata(BUNDLE), render_initdata(BUNDLE)
    assert first == second
    doc = tomllib.loads(first.decode())
    assert doc["algorithm"] == "sha384"
    assert initdata.tdx_mrconfigid(first) == initdata.tdx_mrconfigid(second)
