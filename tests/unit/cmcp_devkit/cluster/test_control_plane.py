"""cmcp_devkit.cluster.control_plane: the pure parts of the local cluster's launcher and its CLI.

Starting the control plane is what ``tests/e2e`` does; no unit test starts one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cmcp_devkit.cluster import control_plane
from cmcp_devkit.cluster.control_plane import (
    REAL_NODE_LABELS,
    REAL_NODE_NAME,
    REAL_NODE_PLACEMENT,
    RUNTIME_CLASSES,
    SNP_LABELS,
    TDX_LABELS,
    LocalCluster,
    default_nodes,
    main,
    run_tool,
)


@pytest.fixture
def run_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run" / "current.json"
    monkeypatch.setattr(control_plane, "RUN_FILE", path)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_real_node_takes_both_runtime_classes_and_the_default_registered_node_neither() -> None:
    """Pods of either kata class must be able to run (only the real node runs pods), while the plain
    registered-only node is the eligible non-TEE node the scheduling tests need."""
    for rc, selector in RUNTIME_CLASSES.items():
        assert selector.items() <= REAL_NODE_LABELS.items(), rc
        assert not any(selector.items() <= n.labels.items() for n in default_nodes()), rc
    assert REAL_NODE_LABELS == {**TDX_LABELS, **SNP_LABELS}
    assert REAL_NODE_PLACEMENT == {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE_NAME}}
    assert "tolerations" not in REAL_NODE_PLACEMENT  # the real node is untainted: every pod may run there


def test_unknown_command_prints_usage(run_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    usage = "usage: python -m cmcp_devkit.cluster up [--real-node]|down|kubeconfig|status|import-image"
    assert usage in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["help", "-h", "--help"])
def test_help_says_what_up_runs_with_and_without_the_real_node(
    flag: str, run_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert "No pod runs" in out and "registered-only" in out  # up alone
    assert "the only node that runs pods" in out  # up --real-node


def test_kubeconfig_and_status_without_a_cluster(run_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kubeconfig"]) == 1
    assert "no cluster up" in capsys.readouterr().err
    assert main(["status"]) == 1
    assert capsys.readouterr().out.strip() == "down"
    assert main([]) == 1  # status is the default


def test_kubeconfig_prints_the_running_clusters_path(run_file: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run_file.parent.mkdir(parents=True)
    run_file.write_text(json.dumps({"pid": os.getpid(), "kubeconfig": "/state/admin.kubeconfig"}))
    assert main(["kubeconfig"]) == 0
    assert capsys.readouterr().out.strip() == "/state/admin.kubeconfig"


def test_status_of_a_cluster_whose_supervisor_died(run_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run_file.parent.mkdir(parents=True)
    run_file.write_text(json.dumps({"pid": _dead_pid(), "kubeconfig": "/k"}))
    assert main(["status"]) == 1
    assert capsys.readouterr().out.strip() == "down"


def test_a_corrupt_run_file_reads_as_no_cluster(run_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_file.parent.mkdir(parents=True)
    run_file.write_text("{not json")
    assert main(["kubeconfig"]) == 1


def test_run_tool_passes_kubeconfig_and_raises_with_stderr(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCP_E2E_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HELM_CACHE_HOME", raising=False)
    script = 'echo "$KUBECONFIG $HELM_CACHE_HOME $1"; echo oops >&2; exit "$2"'
    ok = run_tool(Path("/bin/sh"), tmp_path / "kc", ["-c", script, "sh", "arg", "0"])
    assert ok.stdout.split() == [str(tmp_path / "kc"), str(tmp_path / "cache" / "helm" / "cache"), "arg"]
    with pytest.raises(subprocess.CalledProcessError) as info:
        run_tool(Path("/bin/sh"), None, ["-c", script, "sh", "x", "3"])
    assert info.value.returncode == 3 and "oops" in info.value.stderr
    assert run_tool(Path("/bin/sh"), None, ["-c", script, "sh", "x", "3"], check=False).returncode == 3


def test_sweep_removes_only_state_of_dead_owners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, alive, keep, foreign = (tmp_path / f"cmcp-e2e-{n}" for n in ("dead", "alive", "keep", "foreign"))
    for d in (dead, alive, keep, foreign):
        d.mkdir()
    (dead / "owner.pid").write_text(str(_dead_pid()))
    (alive / "owner.pid").write_text(str(os.getpid()))
    (keep / "owner.pid").write_text(str(_dead_pid()))
    control_plane._sweep_stale_state(keep)
    assert not dead.exists()
    assert alive.exists() and keep.exists() and foreign.exists()  # no owner file: not ours to judge


def test_terminate_group_ends_the_whole_process_group(tmp_path: Path) -> None:
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    out = tmp_path / "out"
    with open(out, "wb") as fh:
        popen = subprocess.Popen([sys.executable, "-c", code], stdout=fh, start_new_session=True)
    while not out.read_text().strip():
        assert popen.poll() is None
        time.sleep(0.01)
    child = int(out.read_text())
    control_plane._terminate_group(popen, grace=5.0)
    assert popen.returncode is not None
    assert _gone_or_zombie(child)  # the component's own child went with the group


def _gone_or_zombie(pid: int, timeout: float = 30.0) -> bool:
    """Orphans are reaped by init, so a killed one is briefly a zombie: either counts as ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in {"Z", "X"}:
            return True
        time.sleep(0.01)
    return False


def test_local_cluster_before_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    cluster = LocalCluster(nodes=[], state_dir=state)
    assert (state / "owner.pid").read_text() == str(os.getpid())
    assert cluster.kubeconfig == state / "admin.kubeconfig" and cluster.logs.is_dir()
    (cluster.logs / "etcd.log").write_text("".join(f"line {i}\n" for i in range(40)))
    tail = cluster.log_tail("etcd", "apiserver", lines=2)
    assert tail == "--- etcd ---\nline 38\nline 39\n--- apiserver ---\n(no log)"
    cluster.stop()
    cluster.stop()  # idempotent
    assert state.exists()  # a state dir the caller gave is the caller's

    monkeypatch.delenv("CMCP_E2E_KEEP_STATE", raising=False)
    own = LocalCluster(nodes=[])
    assert own.state_dir.name.startswith("cmcp-e2e-")
    own.stop()
    assert not own.state_dir.exists()  # its own temporary state goes


def test_real_node_flag_reaches_up_and_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(control_plane, "cmd_up", lambda real_node=False: calls.append(("up", real_node)) or 0)
    monkeypatch.setattr(
        control_plane, "cmd_serve", lambda d, real_node=False: calls.append((str(d), real_node)) or 0
    )
    main(["up"])
    main(["up", "--real-node"])
    main(["_serve", "/s", "--real-node"])
    assert calls == [("up", False), ("up", True), ("/s", True)]


def test_down_takes_back_an_abandoned_real_node_even_without_a_cluster(
    run_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(control_plane.os, "geteuid", lambda: 0)
    monkeypatch.setattr(control_plane, "clean_if_abandoned", lambda: ["bridge cmcpnode0", "cgroup x"])
    assert main(["down"]) == 0
    assert "removed what a real node left on the host: 2 items" in capsys.readouterr().err


def test_real_node_needs_the_netns_pod_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control_plane, "ensure_all", lambda: None)
    monkeypatch.setattr(control_plane, "ensure_kubelet", lambda: Path("/kubelet"))
    monkeypatch.setattr(control_plane, "ensure_kube_proxy", lambda: Path("/kube-proxy"))
    cluster = LocalCluster(nodes=[], state_dir=tmp_path / "s", pod_network="loopback", real_node=True)
    with pytest.raises(control_plane.ClusterStartError, match="needs the netns pod network"):
        cluster.start()
    assert cluster.real_node is None


def test_network_policy_needs_the_real_node_and_a_host_that_can_steer_packets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="network_policy needs real_node"):
        LocalCluster(nodes=[], state_dir=tmp_path / "a", network_policy=True)
    monkeypatch.setattr(control_plane, "ensure_all", lambda: None)
    monkeypatch.setattr(control_plane, "ensure_kubelet", lambda: Path("/kubelet"))
    monkeypatch.setattr(control_plane, "ensure_netpol", lambda: Path("/cmcp-netpol"))
    monkeypatch.setattr(control_plane.netpol, "missing_prerequisites", lambda: "no br_netfilter here")
    cluster = LocalCluster(nodes=[], state_dir=tmp_path / "b", real_node=True, network_policy=True)
    with pytest.raises(control_plane.ClusterStartError, match="no br_netfilter here"):
        cluster.start()
    assert cluster.real_node is None and cluster.procs == []


def test_import_image_needs_a_running_real_node_and_reports_ctr_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(control_plane, "owner_pid", lambda: None)
    assert main(["import-image", "/x.tar"]) == 1
    assert "no real node runs here" in capsys.readouterr().err
    imported: list[Path] = []
    monkeypatch.setattr(control_plane, "owner_pid", lambda: 4242)
    monkeypatch.setattr(control_plane.Ctr, "import_archive", lambda self, a: imported.append(a) or [])
    assert main(["import-image", "/x.tar"]) == 0
    assert imported == [Path("/x.tar")]

    def broken(self: object, a: Path) -> list[str]:
        raise control_plane.CtrError("ctr images import failed: no such file")

    monkeypatch.setattr(control_plane.Ctr, "import_archive", broken)
    assert main(["import-image", "/x.tar"]) == 1
    assert "no such file" in capsys.readouterr().err

