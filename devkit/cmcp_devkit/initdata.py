"""Kata initdata for locally launched enclaves: the product renderer with the dev kit's defaults.

Tests, benchmarks, the demo and the conformance launcher all render initdata the same way
(:func:`cmcp_core.initdata.render_for_bundle`); only the image reference and defaults differ, so
they are parameters here rather than copies of the renderer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cmcp_core import initdata

DEFAULT_AUDIENCE = "urn:cmcp:test-upstream"
DEFAULT_ROUTE = "default/test"
TEST_IMAGE = "ghcr.io/cmcp/enclave@sha256:" + "0" * 64  # by digest, like every enclave image
ENCLAVE_COMMAND = ("cmcp-enclave",)


def render_initdata(bundle_dir: str | Path, *, audience: str = DEFAULT_AUDIENCE, route: str = DEFAULT_ROUTE,
                    algorithm: str = "sha384", image: str = TEST_IMAGE,
                    command: Sequence[str] = ENCLAVE_COMMAND, gateway_keys: Sequence[str] = ()) -> bytes:
    """Initdata naming the bundle's measured hashes and mode, for ``route`` and ``audience``, and
    the gateways (``cmcp_core.gateway_identity.initdata_value``) it takes state-changing calls from."""
    return initdata.render_for_bundle(bundle_dir, route=route, audience=audience, image=image,
                                      command=list(command), algorithm=algorithm,
                                      gateway_keys=gateway_keys)
