"""Helm values that run the chart's pods as real containers on the local cluster's real node.

    python -m cmcp_devkit.cluster.real_node_values [VALUES]   (make demo-cluster; prints the file)

builds (or finds cached) every image of this checkout, imports them into the running real node's
containerd and writes :func:`chart_values` for them (default ``~/.cache/cmcp-e2e/run/real-node-values.yaml``).

Why one place: the e2e suite (``E2ECluster.real_chart_values``) and ``make demo-cluster`` install the
chart on the same node from the same images, and must name them the same way: by repository and
digest under ``imageRegistry=localhost`` (what the node's containerd holds after the import, so
nothing is pulled), the operator and gateway pinned to the real node, and the enclave pods of
``tee: tdx`` through a RuntimeClass of the ``kata-qemu-tdx`` handler, whose OCI hook and TSM stand-in
give the enclave's real ``tdx`` provider simulated TDX evidence of its own initdata
(ADR 0019). That evidence is software-only, so the chart's ``allowSimulated`` (the
simulated profile's) stays on.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cmcp_devkit import images
from cmcp_devkit.images import Built

from .containerd import Ctr, CtrError
from .control_plane import REAL_NODE_PLACEMENT, RUN_DIR
from .node import NodePaths, owner_pid

COMPONENTS = ("operator", "gateway", "enclave")
PLACED = ("operator", "gateway")  # the enclave pods are placed by their RuntimeClass
DEFAULT_TDX_RUNTIME_CLASS = "kata-qemu-tdx"  # the plane's: its TDX selector matches only the real node


def chart_values(images: Mapping[str, Built], tdx_runtime_class: str = DEFAULT_TDX_RUNTIME_CLASS
                 ) -> dict[str, Any]:
    """Values naming ``images`` (name -> build, at least the three components) by digest."""
    values: dict[str, Any] = {
        "imageRegistry": "localhost",
        "attestation": {"allowedTeeTypes": ["tdx"], "runtimeClasses": {"tdx": tdx_runtime_class}},
    }
    for component in COMPONENTS:
        values[component] = {"image": {"repository": f"cmcp-{component}", "digest": images[component].digest}}
    for component in PLACED:
        values[component].update(copy.deepcopy(REAL_NODE_PLACEMENT))
    return values


def main(argv: list[str] | None = None) -> int:
    """Every image of this checkout into the running real node, and the chart values naming them."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m cmcp_devkit.cluster.real_node_values [VALUES]", file=sys.stderr)
        return 2
    if owner_pid() is None:
        print("no real node runs here (python -m cmcp_devkit.cluster up --real-node)", file=sys.stderr)
        return 1
    try:
        built = images.ensure_cluster_images()
        ctr = Ctr(NodePaths().socket)
        for image in built.values():
            ctr.import_archive(Path(image.archive))
    except (images.ImagesError, CtrError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args[0]) if args else RUN_DIR / "real-node-values.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(chart_values(built)))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
