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
    FORWARD_GUARD,
    NodeNet,
    NodePaths,
    RealNode,
    cni_conflist,
    forward_guard_rules,
    kube_proxy_argv,
    kube_proxy_config,
    kubelet_argv,
    kubelet_config,
    node_chain,
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
    # the stand-in's FUSE mount sits under the run dir, so clean_host unmounts it (also when dead)
    assert PATHS.tsm_mount.is_relative_to("/r") and PATHS.tsm_registry.is_relative_to("/r")
    assert PATHS.base_spec("kata-qemu-tdx").is_relative_to("/d") and PATHS.tsm_hook_log.is_relative_to("/d")


@pytest.mark.parametrize("tee", ["tdx", "snp"])
def test_kata_hooks_run_this_python_on_the_nodes_stand_in(tee: str) -> None:
    hooks = node.tsm_hooks(PATHS, tee)
    assert set(hooks) == {"createContainer", "poststop"}
    for stage, (hook,) in hooks.items():
        assert hook["path"] == node.sys.executable and hook["args"][0] == hook["path"]
        assert hook["args"][1:4] == ["-m", "cmcp_devkit.cluster.tsm_hook", stage]
        args = hook["args"]
        assert args[args.index("--platform") + 1] == tee
        assert args[args.index("--mount") + 1] == str(PATHS.tsm_mount)
        assert args[args.index("--registry") + 1] == str(PATHS.tsm_registry)
        assert hook["env"][0].startswith("PYTHONPATH=") and hook["timeout"] > 0
    assert node.tsm_standin_argv(PATHS)[1:3] == ["-m", node.TSM_STANDIN_MODULE]


def test_a_dead_nodes_stand_in_is_among_the_processes_clean_host_kills(tmp_path: Path) -> None:
    """By module name and the node's dirs in its command line: not any python process."""
    paths = NodePaths(tmp_path / "d", tmp_path / "r")
    proc = node.subprocess.Popen([node.sys.executable, "-c", "import time; time.sleep(60)",
                                  node.TSM_STANDIN_MODULE, f"{paths.run}/tsm"])
    other = node.subprocess.Popen([node.sys.executable, "-c", "import time; time.sleep(60)",
                                   node.TSM_STANDIN_MODULE, "/elsewhere/tsm"])
    try:
        found = node._mentions(paths)
        assert proc.pid in found and other.pid not in found
    finally:
        proc.kill()
        other.kill()
        proc.wait()
        other.wait()


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
    assert not any(a.startswith("--register-with-taints") for a in argv)  # the node that runs every pod


def test_kube_proxy_serves_the_node_and_leaves_host_wide_settings_alone() -> None:
    cfg = yaml.safe_load(kube_proxy_config("real-node-1", NodeNet(3), PATHS))
    assert cfg["kind"] == "KubeProxyConfiguration" and cfg["mode"] == "iptables"
    assert cfg["hostnameOverride"] == "real-node-1"
    assert cfg["clientConnection"]["kubeconfig"] == "/d/kube-proxy.kubeconfig"
    assert cfg["clusterCIDR"] == "198.19.3.64/26" and cfg["nodePortAddresses"] == ["198.19.3.65/32"]
    assert cfg["iptables"]["masqueradeAll"] is True  # replies from a pod on the same bridge come back
    assert cfg["iptables"]["localhostNodePorts"] is False  # would set route_localnet host-wide
    # zero means "leave the host's conntrack settings as they are"
    assert set(cfg["conntrack"].values()) == {0, "0s"}
    for address in (cfg["healthzBindAddress"], cfg["metricsBindAddress"]):
        assert address.startswith("127.0.0.1:")
    assert kube_proxy_argv(Path("/bin/kube-proxy"), PATHS) == [
        "/bin/kube-proxy", "--config=/d/kube-proxy-config.yaml", "--v=1"]


def test_the_forward_guard_lets_the_bridge_forward_only_into_itself() -> None:
    rules = forward_guard_rules()
    assert rules[-1] == ["-I", "FORWARD", "1", "-j", FORWARD_GUARD]  # jumped to once it is complete
    in_guard = [r[2:] for r in rules if r[:2] == ["-A", FORWARD_GUARD]]
    assert in_guard == [["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"], ["-i", BRIDGE, "-j", "DROP"]]


def test_clean_up_takes_the_kubelet_and_kube_proxy_chains_and_jumps_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert all(node_chain(c) for c in ("KUBE-SERVICES", "KUBE-SVC-ABC", "KUBE-FIREWALL", FORWARD_GUARD))
    assert not any(node_chain(c) for c in ("FORWARD", "DOCKER", "CMCP-OTHER"))
    saved = {
        "filter": "-P FORWARD ACCEPT\n-N KUBE-FORWARD\n-N CMCP-NODE-FORWARD\n-N OTHER\n"
                  "-A FORWARD -j CMCP-NODE-FORWARD\n-A FORWARD -m comment --comment \"KUBE-X\" -j OTHER\n"
                  "-A KUBE-FORWARD -j ACCEPT\n",
        "nat": "-N KUBE-SERVICES\n-N KUBE-SVC-A\n"
               "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
               "-A KUBE-SERVICES -j KUBE-SVC-A\n",
        "mangle": "",
    }

    def fake_run(argv: list[str]) -> object:
        return type("Done", (), {"stdout": saved[argv[3]], "returncode": 0})()

    monkeypatch.setattr(node, "_run", fake_run)
    assert node._chains("iptables") == [("filter", "KUBE-FORWARD"), ("filter", "CMCP-NODE-FORWARD"),
                                        ("nat", "KUBE-SERVICES"), ("nat", "KUBE-SVC-A")]
    # only jumps from chains that are not the node's (those are flushed), by target, not by comment
    assert node._chain_rules("iptables") == [
        ("filter", ["-A", "FORWARD", "-j", "CMCP-NODE-FORWARD"]),
        # a quoted comment stays one word, or the -D that removes the rule would not match it
        ("nat", ["-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
                 "-j", "KUBE-SERVICES"]),
    ]


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
