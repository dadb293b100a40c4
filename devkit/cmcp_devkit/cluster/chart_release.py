"""The chart's release ConfigMap, for what runs beside a chart install on the local cluster.

``charts/cmcp`` refuses to render without a signed release manifest and key (values ``release``)
and mounts them into the operator and gateway pods. A guard pod the demo or a test deploys next
to the install reads the *same* ConfigMap, so every relying party trusts the same releases:
:func:`chart_values` puts a :class:`~cmcp_devkit.release.DevRelease` into the values, and
:func:`guard_mount` gives the volume, mount and ``cmcp-guard`` flags that read it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmcp_devkit.release import DevRelease

CHART_NAME = "cmcp"
MOUNT_PATH = "/etc/cmcp/release"  # the chart's cmcp.release.mountPath
DEFAULT_NAME = "dev"


def chart_values(release: DevRelease, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """Values carrying the manifest and key as text (what ``--set-file`` would pass)."""
    return {"release": {"manifests": {name: release.manifest.read_text()},
                        "keys": {name: release.key.read_text()}}}


def configmap_name(helm_release: str) -> str:
    """The chart's ``cmcp.release.fullname`` for a release without name overrides."""
    full = helm_release if CHART_NAME in helm_release else f"{helm_release}-{CHART_NAME}"
    return f"{full[:47].rstrip('-')}-release"[:63].rstrip("-")


@dataclass(frozen=True)
class GuardMount:
    volume: dict[str, Any]
    volume_mount: dict[str, Any]
    args: list[str]


def guard_mount(helm_release: str, name: str = DEFAULT_NAME) -> GuardMount:
    """Volume + read-only mount of the chart's ConfigMap, and the flags naming its files."""
    return GuardMount(
        volume={"name": "cmcp-release", "configMap": {"name": configmap_name(helm_release)}},
        volume_mount={"name": "cmcp-release", "mountPath": MOUNT_PATH, "readOnly": True},
        args=[f"--release-manifest={MOUNT_PATH}/manifest-{name}.json",
              f"--release-key={MOUNT_PATH}/key-{name}.pem"],
    )
