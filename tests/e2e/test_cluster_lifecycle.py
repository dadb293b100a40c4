"""A second local plane beside the session's: control plane and a registered-only node, no real node (the
machine has one, held by the session). It starts usable, schedules, and leaves nothing behind when
stopped. That a real node's stop leaves nothing on the host is ``test_cluster_real_node.py``'s."""

from __future__ import annotations

import os
import subprocess

import pytest

from cmcp_devkit.cluster.control_plane import REGISTERED_NODES, LocalCluster, NodeSpec
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.cluster.registered_nodes import REGISTERED_NODE_TOLERATION

from .conftest import E2ECluster
from .workloads import echo_pod, wait_pod


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
    host_if = None
    try:
        solo.start()
        assert solo.net is not None and solo.real_node is None
        host_if = f"cmcpe2e{solo.net.index}" if solo.net.mode == "netns" else None
        assert REGISTERED_NODES in {p.name for p in solo.procs}
        pids = [p.popen.pid for p in solo.procs]
        if solo.net.holder is not None:
            pids.append(solo.net.holder.pid)
        kube = Kube.from_kubeconfig(solo.kubeconfig)
        try:
            assert {n["metadata"]["name"] for n in kube.get("/api/v1/nodes")["items"]} == {"solo-node"}
            assert kube.get("/apis/node.k8s.io/v1/runtimeclasses/kata-qemu-tdx")["handler"] == "kata-qemu-tdx"
            # its scheduler binds a pod that tolerates the node's taint; no kubelet will run it
            kube.create("/api/v1/namespaces/default/pods",
                        echo_pod("solo", tolerations=[REGISTERED_NODE_TOLERATION]))
            pod = wait_pod(kube, "default", "solo", "to be bound", lambda p: p["spec"].get("nodeName"),
                           diag=lambda: solo.log_tail(REGISTERED_NODES, "kube-scheduler"))
            assert pod["spec"]["nodeName"] == "solo-node"
        finally:
            kube.close()
        assert all(_alive(p) for p in pids)
    finally:
        solo.stop()
    assert [p for p in pids if _alive(p)] == [], "every control-plane and registered-node process is gone"
    assert not solo.state_dir.exists()
    if host_if:
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
        assert host_if not in links, "the veth pair went with the pod network namespace"
