"""Helm values that run the chart's pods as real containers on the local cluster's real node.

Why one place: the e2e suite (``E2ECluster.real_chart_values``) and ``make demo-cluster`` install the
chart on the same node from the same images, and must name them the same way: by repository and
digest under ``imageRegistry=localhost`` (what the node's containerd holds after the import, so
nothing is pulled), the operator and gateway pinned to the real node, and the enclave pods of
``tee: tdx`` through a RuntimeClass of the ``kata-qemu-tdx`` handler, whose OCI hook and TSM stand-in
give the enclave's real ``tdx`` provider simulated TDX evidence of its own initdata
(``simulateTee: false``). That evidence is software-only, so the chart's ``allowSimulated`` (the
simulated profile's) stays on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from cmcp_devkit.images import Built

from .control_plane import REAL_NODE_PLACEMENT

COMPONENTS = ("operator", "gateway", "enclave")
PLACED = ("operator", "gateway")  # the enclave pods are placed by their RuntimeClass
DEFAULT_TDX_RUNTIME_CLASS = "kata-qemu-tdx"  # the plane's: its TDX selector matches only the real node


def chart_values(images: Mapping[str, Built], tdx_runtime_class: str = DEFAULT_TDX_RUNTIME_CLASS
                 ) -> dict[str, Any]:
    """Values naming ``images`` (name -> build, at least the three components) by digest."""
    values: dict[str, Any] = {
        "imageRegistry": "localhost",
        "attestation": {"simulateTee": False, "allowedTeeTypes": ["tdx"],
                        "runtimeClasses": {"tdx": tdx_runtime_class}},
    }
    for component in COMPONENTS:
        values[component] = {"image": {"repository": f"cmcp-{component}", "digest": images[component].digest}}
    for component in PLACED:
        values[component].update(copy.deepcopy(REAL_NODE_PLACEMENT))
    return values
