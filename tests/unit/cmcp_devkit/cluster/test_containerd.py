"""cmcp_devkit.cluster.containerd: the real node's containerd config and its ctr calls."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cmcp_devkit.cluster.containerd import (
    ContainerdPaths,
    Ctr,
    CtrError,
    archive_images,
    containerd_config,
    digest_reference,
    hooked_base_spec,
)
from cmcp_devkit.cluster.oci import ImageFile, write_image_archive

PATHS = ContainerdPaths(Path("/d/containerd"), Path("/r/containerd"), Path("/r/c.sock"), Path("/d/net.d"))


def test_config_keeps_everything_under_the_node_dirs_and_fits_this_host() -> None:
    cfg = tomllib.loads(containerd_config(PATHS, "localhost/pause:1", ("kata-qemu-tdx", "kata-qemu-snp")))
    assert cfg["version"] == 2
    where = (cfg["root"], cfg["state"], cfg["grpc"]["address"])
    assert where == ("/d/containerd", "/r/containerd", "/r/c.sock")
    assert cfg["plugins"]["io.containerd.internal.v1.opt"]["path"] == "/d/containerd/opt"
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/pause:1"
    # root without CAP_SYS_RESOURCE; no AppArmor; netns under the state dir, not /run/netns
    assert cri["restrict_oom_score_adj"] is True
    assert cri["disable_apparmor"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/d/net.d", "max_conf_num": 1}
    runtimes = cri["containerd"]["runtimes"]
    assert set(runtimes) == {"runc", "kata-qemu-tdx", "kata-qemu-snp"}
    for name, rt in runtimes.items():
        assert rt["runtime_type"] == "io.containerd.runc.v2"
        assert rt["options"] == {"SystemdCgroup": False, "Root": "/r/containerd/runc"}
        assert rt.get("pod_annotations") == (None if name == "runc" else ["io.katacontainers.*"])


def test_ctr_names_socket_and_namespace_and_reports_failures(tmp_path: Path) -> None:
    fake = tmp_path / "ctr"
    fake.write_text(
        '#!/bin/sh\necho "$@" >> "$0.calls"\n'
        'case "$5 $6" in "tasks list") printf "TASK PID STATUS\\nabc 42 RUNNING\\n";;\n'
        '"containers info") echo \'{"Spec": {"annotations": {"a": "b"}}}\';;\n'
        '"images import") echo "no such file" >&2; exit 1;; esac\n'
    )
    fake.chmod(0o755)
    ctr = Ctr(Path("/r/c.sock"), binary=str(fake))
    assert ctr.task_pid("abc") == 42
    assert ctr.container_info("abc")["Spec"]["annotations"] == {"a": "b"}
    with pytest.raises(CtrError, match="no such file"):
        ctr.import_archive(Path("/x.tar"))
    with pytest.raises(CtrError, match="no task for container zzz"):
        ctr.task_pid("zzz")
    first = (tmp_path / "ctr.calls").read_text().splitlines()[0]
    assert first == "--address /r/c.sock --namespace k8s.io tasks list"


def test_digest_reference_drops_the_tag_not_a_registry_port() -> None:
    digest = "sha256:" + "ab" * 32
    assert digest_reference("localhost/cmcp-enclave:0.1.0", digest) == f"localhost/cmcp-enclave@{digest}"
    with_port = "reg.example:5000/team/cmcp-guard"
    assert digest_reference(with_port, digest) == f"{with_port}@{digest}"
    assert digest_reference(f"localhost/x@{'cd' * 32}", digest) == f"localhost/x@{digest}"


def test_an_imported_archive_is_also_named_by_its_digest(tmp_path: Path) -> None:
    """The CRI finds a pod's ``repo@sha256:`` image only under a name containerd holds: import tags it."""
    archive = write_image_archive(tmp_path / "echo.tar", "localhost/cmcp-test-http-echo:0.1.0",
                                  [ImageFile("/hello", b"hi")], entrypoint=["/hello"])
    [(name, digest)] = archive_images(archive)
    assert name == "localhost/cmcp-test-http-echo:0.1.0" and digest.startswith("sha256:")
    fake = tmp_path / "ctr"
    fake.write_text('#!/bin/sh\necho "$@" >> "$0.calls"\n')
    fake.chmod(0o755)
    refs = Ctr(Path("/r/c.sock"), binary=str(fake)).import_archive(archive)
    by_digest = f"localhost/cmcp-test-http-echo@{digest}"
    assert refs == [name, by_digest]
    calls = (tmp_path / "ctr.calls").read_text().splitlines()
    assert calls == [f"--address /r/c.sock --namespace k8s.io images import {archive}",
                     f"--address /r/c.sock --namespace k8s.io images tag --force {name} {by_digest}"]


def test_kata_handlers_get_their_hooked_base_spec_and_runc_does_not() -> None:
    specs = {"kata-qemu-tdx": Path("/d/tdx.json"), "kata-qemu-snp": Path("/d/snp.json")}
    cfg = tomllib.loads(containerd_config(PATHS, "p", ("kata-qemu-tdx", "kata-qemu-snp"), specs))
    runtimes = cfg["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["kata-qemu-tdx"]["base_runtime_spec"] == "/d/tdx.json"
    assert runtimes["kata-qemu-snp"]["base_runtime_spec"] == "/d/snp.json"
    assert "base_runtime_spec" not in runtimes["runc"]


def test_hooked_base_spec_adds_hooks_and_leaves_the_default_alone() -> None:
    default = {"ociVersion": "1.0.2-dev", "hooks": {"poststop": [{"path": "/old"}]}}
    spec = hooked_base_spec(default, {"createContainer": [{"path": "/h"}], "poststop": [{"path": "/p"}]})
    assert spec["hooks"] == {"poststop": [{"path": "/old"}, {"path": "/p"}],
                             "createContainer": [{"path": "/h"}]}
    assert default["hooks"] == {"poststop": [{"path": "/old"}]}
