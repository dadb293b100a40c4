"""cmcp_devkit.cluster.node: the real node's kubelet and CNI configuration, paths, host checks.

Starting the node and cleaning the host need root, a kubelet and containerd: those are e2e
(tests/e2e/test_cluster_real_node.py). Here the pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cmcp_devkit.cluster import node
from cmcp_devkit.cluster.node import (
    BRIDGE,
    CNI_NETWORK,
    NodeNet,
    NodePaths,
    RealNode,
    cni_conflist,
    kubelet_argv,
    kubelet_config,
)

PATHS = NodePaths(Path("/d"), Path("/r"))


def test_addresses_sit_between_the_veth_and_the_service_range() -> None:
    net = NodeNet(7)
    assert (net.subnet, net.node_ip, net.range_start, net.range_end) == (
        "198.19.7.64/26", "198.19.7.65", "198.19.7.66", "198.19.7.126",
    )  # 198.19.7.0/30 is the pod-network veth, 198.19.7.128/25 the Service range


def test_paths_stay_under_the_two_node_dirs() -> None:
    c = PATHS.containerd()
    for p in (c.root, c.cni_conf_dir, PATHS.kubelet_root, PATHS.pod_logs, PATHS.kubeconfig, PATHS.sysctls):
        assert p.is_relative_to("/d")
    for p in (c.state, c.socket, PATHS.owner):
        assert p.is_relative_to("/r")


def test_cni_is_a_bridge_without_nat_or_gateway_setup() -> None:
    doc = json.loads(cni_conflist(NodeNet(3), PATHS))
    assert doc["name"] == CNI_NETWORK
    (bridge,) = doc["plugins"]  # no portmap: it would add iptables chains to clean up
    assert bridge["type"] == "bridge" and bridge["bridge"] == BRIDGE
    assert bridge["ipMasq"] is False and bridge["isGateway"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local" and ipam["dataDir"] == "/d/cni/state"
    assert ipam["ranges"] == [[{"subnet": "198.19.3.64/26", "rangeStart": "198.19.3.66",
                                "rangeEnd": "198.19.3.126", "gateway": "198.19.3.65"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.19.3.65"}]


def test_kubelet_config_fits_this_host_and_trusts_only_the_cluster_ca() -> None:
    cfg = yaml.safe_load(kubelet_config(NodeNet(3), PATHS, Path("/pki/ca.crt")))
    assert cfg["kind"] == "KubeletConfiguration"
    assert (cfg["failCgroupV1"], cfg["cgroupDriver"], cfg["failSwapOn"]) == (False, "cgroupfs", False)
    assert cfg["containerRuntimeEndpoint"] == "unix:///r/containerd.sock"
    assert cfg["address"] == "198.19.3.65" and cfg["readOnlyPort"] == 0
    assert cfg["authentication"] == {
        "anonymous": {"enabled": False},
        "webhook": {"enabled": False},
        "x509": {"clientCAFile": "/pki/ca.crt"},
    }
    assert cfg["podLogsDir"] == "/d/pod-logs" and cfg["resolvConf"] == ""


def test_kubelet_argv_names_the_node_and_its_dirs() -> None:
    argv = kubelet_argv(Path("/bin/kubelet"), "real-node-1", NodeNet(3), PATHS)
    assert argv[0] == "/bin/kubelet"
    assert {"--hostname-override=real-node-1", "--node-ip=198.19.3.65", "--root-dir=/d/kubelet",
            "--config=/d/kubelet-config.yaml", "--kubeconfig=/d/kubelet.kubeconfig"} <= set(argv)
    assert not any(a.startswith("--register-with-taints") for a in argv)


def test_a_tainted_node_registers_with_its_taints() -> None:
    taints = [{"key": "cmcp.dev/real-node", "value": "true", "effect": "NoSchedule"},
              {"key": "k", "effect": "NoExecute"}]
    argv = kubelet_argv(Path("/bin/kubelet"), "real-node-1", NodeNet(3), PATHS, taints)
    assert "--register-with-taints=cmcp.dev/real-node=true:NoSchedule,k=:NoExecute" in argv


def test_prerequisites_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.os, "geteuid", lambda: 1000)
    assert "needs root" in (node.missing_prerequisites() or "")
    monkeypatch.setattr(node.os, "geteuid", lambda: 0)
    monkeypatch.setattr(node.shutil, "which", lambda t: None if t == "runc" else f"/usr/bin/{t}")
    assert "missing runc" in (node.missing_prerequisites() or "")


def test_mountinfo_escapes_are_undone() -> None:
    assert node._unescape_mount(r"/d/a\040b") == "/d/a b"


def test_sysctls_are_recorded_once_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc_sys = tmp_path / "proc-sys"
    for key in node.KUBELET_SYSCTLS:
        (proc_sys / key).parent.mkdir(parents=True, exist_ok=True)
        (proc_sys / key).write_text("0\n")
    real_path = node.Path

    def fake_path(*parts: object) -> Path:
        p = real_path(*parts)  # type: ignore[arg-type]
        return proc_sys if p == real_path("/proc/sys") else p

    monkeypatch.setattr(node, "Path", fake_path)
    paths = NodePaths(tmp_path / "d", tmp_path / "r")
    paths.data.mkdir()
    node.record_sysctls(paths)
    (proc_sys / "kernel/panic").write_text("10\n")  # what the kubelet does
    node.record_sysctls(paths)  # a second start keeps the host's values, not the kubelet's
    node._restore_sysctls(paths)
    assert (proc_sys / "kernel/panic").read_text().strip() == "0"


def test_a_second_real_node_waits_for_the_machine_lock_then_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "NODE_LOCK", tmp_path / "node.lock")
    monkeypatch.setenv("CMCP_E2E_NODE_WAIT_SECONDS", "1")
    first, second = RealNode("a", 1, NodePaths(tmp_path / "a", tmp_path / "ra")), RealNode(
        "b", 1, NodePaths(tmp_path / "b", tmp_path / "rb")
    )
    first._lock_machine()
    with pytest.raises(node.NodeError, match="one per machine"):
        second._lock_machine()
    first.cleanup()  # not claimed: only the lock goes
    second._lock_machine()  # the machine is free again
    second._unlock_machine()
