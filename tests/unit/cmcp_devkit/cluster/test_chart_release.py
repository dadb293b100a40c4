"""cmcp_devkit.cluster.chart_release: the chart's release ConfigMap for pods beside an install.

That the names match what ``helm template`` renders is checked against the chart itself in
``tests/unit/test_chart_static.py``; here, the module's own rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_devkit.cluster.chart_release import MOUNT_PATH, chart_values, configmap_name, guard_mount
from cmcp_devkit.release import write_dev_release


def test_chart_values_carry_the_manifest_and_key_text(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path)
    values = chart_values(dev, name="r1")
    assert values == {"release": {"manifests": {"r1": dev.manifest.read_text()},
                                  "keys": {"r1": dev.key.read_text()}}}


@pytest.mark.parametrize(("helm_release", "expected"), [
    ("demo", "demo-cmcp-release"),
    ("cmcp", "cmcp-release"),             # the chart name is not repeated
    ("my-cmcp-x", "my-cmcp-x-release"),
])
def test_configmap_name_follows_the_chart_fullname(helm_release: str, expected: str) -> None:
    assert configmap_name(helm_release) == expected


def test_configmap_name_is_a_valid_dns_label_for_long_releases() -> None:
    name = configmap_name("a" * 45 + "-" + "b" * 30)
    assert len(name) <= 63 and name.endswith("-release")
    assert "--" not in name and not name.startswith("-")


def test_guard_mount_reads_the_configmap_files_read_only() -> None:
    mount = guard_mount("demo", name="r1")
    assert mount.volume == {"name": "cmcp-release", "configMap": {"name": "demo-cmcp-release"}}
    assert mount.volume_mount == {"name": "cmcp-release", "mountPath": MOUNT_PATH, "readOnly": True}
    assert mount.args == [f"--release-manifest={MOUNT_PATH}/manifest-r1.json",
                          f"--release-key={MOUNT_PATH}/key-r1.pem"]
