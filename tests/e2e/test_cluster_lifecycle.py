"""A second, one-node local plane: start, run a pod, stop — and nothing is left behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from cmcp_devkit.cluster.control_plane import LocalCluster, NodeSpec
from cmcp_devkit.cluster.kube import Kube

from .conftest import E2ECluster
from .workloads import echo_pod, is_ready, wait_pod


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_leaves_no_process_no_network_no_state(cluster: E2ECluster) -> None:
    if not cluster.is_local:
        pytest.skip("about the local plane only")
    solo = LocalCluster(nodes=[NodeSpec("solo-node")])
    pids: list[int] = []
    try:
        solo.start()
        assert solo.net is not None
        host_if = f"cmcpe2e{solo.net.index}" if solo.net.mode == "netns" else None
        pids = [p.popen.pid for p in solo.procs]
        if solo.net.holder is not None:
            pids.append(solo.net.holder.pid)
        kube = Kube.from_kubeconfig(solo.kubeconfig)
        try:
            kube.create("/api/v1/namespaces/default/pods", echo_pod("solo"))
            pod = wait_pod(
                kube,
                "default",
                "solo",
                "to be Ready",
                is_ready,
                diag=lambda: solo.log_tail("node-agent", "kube-scheduler"),
            )
        finally:
            kube.close()
        pod_pid = int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
        pids.append(pod_pid)
        assert all(_alive(p) for p in pids)
    finally:
        solo.stop()
    assert [p for p in pids if _alive(p)] == [], "every control-plane, node-agent and pod process is gone"
    assert not solo.state_dir.exists()
    if host_if:
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
        assert host_if not in links, "the veth pair went with the pod network namespace"
