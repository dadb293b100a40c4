"""The API group, version and plurals of cMCP's two CRDs (``crds/*.yaml``): defined once here.

Why in ``cmcp_core``: the operator, the gateway and guard (``route_status``), ``cmcpctl``, the tests
and the benchmarks all name these resources, and ``cmcp_core`` is the one package they all may import.
"""

from __future__ import annotations

GROUP = "cmcp.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
API_PATH = f"/apis/{GROUP}/{VERSION}"  # REST path prefix of both resources
BUNDLE_PLURAL = "policybundles"
ROUTE_PLURAL = "mcproutes"
