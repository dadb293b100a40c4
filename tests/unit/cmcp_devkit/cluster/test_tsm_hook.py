"""The OCI hook that plays the hypervisor: it refuses initdata a Kata runtime would refuse,
registers the decoded bytes for the stand-in, and binds the container's TSM tree (tested here
with a real bind mount on a stand-in rootfs, and through ``main`` as runc calls it)."""

from __future__ import annotations

import base64
import ctypes
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cmcp_core import initdata
from cmcp_devkit.cluster import tsm_hook
from cmcp_devkit.enclave import render_initdata
from tests.paths import EXAMPLES

DATA = render_initdata(EXAMPLES / "minimal")
CID = "ab" * 32


def _state(tmp_path: Path, annotations: dict[str, str], cid: str = CID) -> dict[str, Any]:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs" / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}}))
    return {"ociVersion": "1.0.2", "id": cid, "status": "creating", "bundle": str(bundle),
            "annotations": {"io.kubernetes.cri.container-type": "container", **annotations}}


def _run(state: dict[str, Any], tmp_path: Path, stage: str = "createContainer", platform: str = "tdx",
         monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(state)))
    return tsm_hook.main([stage, "--platform", platform, "--mount", str(tmp_path / "mnt"),
                          "--registry", str(tmp_path), "--log", str(tmp_path / "hook.log")])


@pytest.mark.parametrize("value", [
    "not base64!",
    base64.b64encode(b"plain, not gzip").decode(),
    base64.b64encode(gzip.compress(b"version = 1\n[data\n")).decode(),  # decodes, does not parse
])
def test_undecodable_initdata_fails_the_container(value: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """As Kata refuses the sandbox: a non-zero hook exit makes runc fail the create."""
    state = _state(tmp_path, {initdata.ANNOTATION: value})
    assert _run(state, tmp_path, monkeypatch=monkeypatch) == 1
    assert initdata.ANNOTATION in capsys.readouterr().err
    assert tsm_hook.registration(tmp_path, CID) is None
    assert "refused" in (tmp_path / "hook.log").read_text()


def test_sandbox_and_containers_without_initdata_get_nothing(tmp_path: Path) -> None:
    sandbox = _state(tmp_path, {"io.kubernetes.cri.container-type": "sandbox", initdata.ANNOTATION: "x"})
    assert "sandbox" in tsm_hook.create_container(sandbox, platform="tdx", mount=tmp_path, registry=tmp_path)
    plain = _state(tmp_path, {})
    assert "no TSM" in tsm_hook.create_container(plain, platform="tdx", mount=tmp_path, registry=tmp_path)
    assert tsm_hook.registration(tmp_path, CID) is None


def test_both_kata_platforms_are_served() -> None:
    assert tsm_hook.SERVED_PLATFORMS == tsm_hook.PLATFORMS == ("tdx", "snp")


@pytest.mark.skipif(os.geteuid() != 0, reason="a bind mount needs root")
@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_the_hook_registers_the_decoded_bytes_and_binds_the_containers_tree(
    platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "mnt"
    (mount / CID / "config").mkdir(parents=True)
    state = _state(tmp_path, {initdata.ANNOTATION: initdata.encode_annotation(DATA)})
    target = tmp_path / "bundle" / "rootfs" / "sys" / "kernel"
    try:
        assert _run(state, tmp_path, platform=platform, monkeypatch=monkeypatch) == 0
        assert tsm_hook.registration(tmp_path, CID) == tsm_hook.Registration(platform, DATA, "")
        assert sorted(os.listdir(target)) == ["config"]  # the container's /sys/kernel is its tree
    finally:
        ctypes.CDLL(None, use_errno=True).umount2(str(target).encode(), 2)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(state)))
    assert _run(state, tmp_path, stage="poststop") == 0
    assert tsm_hook.registration(tmp_path, CID) is None
    assert (tmp_path / "hook.log").read_text().splitlines()[-1].startswith("poststop")


@pytest.mark.parametrize("cid", ["", "../escape", ".hidden", "a/b"])
def test_a_container_id_cannot_name_another_path(cid: str, tmp_path: Path) -> None:
    with pytest.raises(tsm_hook.HookRefusal):
        tsm_hook.register(tmp_path, cid, "tdx", DATA)


def test_kernel_params_the_host_adds_are_registered_with_the_initdata(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's knob for booting another guest (Kata's annotation); the stand-in measures it."""
    state = _state(tmp_path, {initdata.ANNOTATION: initdata.encode_annotation(DATA),
                              tsm_hook.KERNEL_PARAMS_ANNOTATION: "init=/bin/sh"})
    bound: list[tuple[Path, Path]] = []  # the mount itself is the root-only test's above
    monkeypatch.setattr(tsm_hook, "_bind", lambda source, target: bound.append((source, target)))
    line = tsm_hook.create_container(state, platform="snp", mount=tmp_path / "mnt", registry=tmp_path)
    assert "kernel params added 'init=/bin/sh'" in line
    assert bound == [(tmp_path / "mnt" / CID, tmp_path / "bundle" / "rootfs" / "sys" / "kernel")]
    assert tsm_hook.registration(tmp_path, CID) == tsm_hook.Registration("snp", DATA, "init=/bin/sh")

