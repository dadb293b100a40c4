"""The local stack most integration tests start: the conformance bundle on one simulated enclave,
the guarded ``mcp`` SDK upstream and a gateway, all real processes (:mod:`cmcp_devkit.stack`)."""

from __future__ import annotations

from cmcp_conformance import bundle as conformance_bundle
from cmcp_conformance.target import Profile
from cmcp_devkit.initdata import render_initdata
from cmcp_devkit.stack import LocalStack


def serve_conformance_route(stack: LocalStack, route: str, *, pinned: bool = True) -> LocalStack:
    """Start ``stack``'s enforce enclave on the conformance bundle for ``route`` (its initdata
    naming the stack's gateway key unless not ``pinned``), then the upstream and the gateway."""
    bundle_dir = conformance_bundle.write(stack.workdir / "bundle", Profile())
    keys = stack.gateway_keys if pinned else []
    stack.start_enclave_on("enforce", bundle_dir, render_initdata(
        bundle_dir, route=route, audience=stack.audience, gateway_keys=keys))
    stack.start_upstream()
    stack.start_gateway()
    return stack
