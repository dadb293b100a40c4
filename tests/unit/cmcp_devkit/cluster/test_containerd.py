"""cmcp_devkit.cluster.containerd: the real node's containerd config and its ctr calls."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cmcp_devkit.cluster.containerd import ContainerdPaths, Ctr, CtrError, containerd_config

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
