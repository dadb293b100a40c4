"""cmcp_devkit.cluster.netpol: the real node's NetworkPolicy engine, what can be checked without a node.

The engine itself runs in tests/e2e/test_cluster_network_policy.py; here its least-privilege
role, its command line, and how readiness and the guarded pod set are read off the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_devkit.cluster import netpol


def test_the_engine_may_only_list_and_watch_pods_namespaces_and_networkpolicies() -> None:
    (role_path, role), (binding_path, binding) = netpol.rbac_objects()
    assert role_path.endswith("/clusterroles") and binding_path.endswith("/clusterrolebindings")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {
        (group, resource, verb)
        for group, resource in (("", "pods"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies"))
        for verb in ("list", "watch")
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": netpol.ENGINE_USER}
    ]


def test_argv_names_our_own_table_queue_node_and_kubeconfig() -> None:
    argv = netpol.engine_argv(Path("/c/cmcp-netpol"), Path("/n/netpol.kubeconfig"), "real-node-1")
    assert argv[0] == "/c/cmcp-netpol"
    assert {"--kubeconfig=/n/netpol.kubeconfig", "--hostname-override=real-node-1",
            f"--nfqueue-id={netpol.QUEUE_ID}", f"--nftables-table={netpol.NFT_TABLE}"} <= set(argv)
    assert netpol.NFT_TABLE != "kube-network-policies"  # a host's own engine is never touched


def test_queue_bound_reads_the_kernels_queue_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = tmp_path / "nfnetlink_queue"
    monkeypatch.setattr(netpol, "QUEUE_STATS", stats)
    assert not netpol.queue_bound()  # no file: no queue
    other = "  100  1234     0 2   128     0     0        0  1\n"
    stats.write_text(f"{other}{netpol.QUEUE_ID}  99 0 2 128 0 0 5 1\n")
    assert netpol.queue_bound()
    stats.write_text(other)
    assert not netpol.queue_bound()


def test_steering_skips_roots_sockets_and_established_flows_then_queues_the_pod_subnet() -> None:
    rules = netpol.steering_rules("198.19.9.64/26")
    assert rules[:2] == [
        ["-m", "owner", "--uid-owner", "0", "-j", "RETURN"],
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
    ]
    queue = ["-j", "NFQUEUE", "--queue-num", str(netpol.QUEUE_ID)]
    assert rules[2:] == [["-s", "198.19.9.64/26", *queue], ["-d", "198.19.9.64/26", *queue]]
    assert not any("--queue-bypass" in rule for rule in rules)  # no engine listening: dropped


def test_prerequisites_name_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netpol.shutil, "which", lambda name: None)
    assert "apt-get install iptables" in (netpol.missing_prerequisites() or "")
    monkeypatch.setattr(netpol.shutil, "which", lambda name: None if name == "nft" else f"/usr/sbin/{name}")
    assert "apt-get install nftables" in (netpol.missing_prerequisites() or "")
    monkeypatch.setattr(netpol.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(netpol, "QUEUE_STATS", tmp_path / "none")
    assert "nfnetlink_queue" in (netpol.missing_prerequisites() or "")
    (tmp_path / "queue").write_text("")
    monkeypatch.setattr(netpol, "QUEUE_STATS", tmp_path / "queue")
    bridge = tmp_path / "bridge-nf-call-iptables"
    monkeypatch.setattr(netpol, "BRIDGE_NF_CALL", bridge)
    assert "br_netfilter" in (netpol.missing_prerequisites() or "")
    bridge.write_text("0\n")
    assert "br_netfilter" in (netpol.missing_prerequisites() or "")
    bridge.write_text("1\n")
    assert netpol.missing_prerequisites() is None


def test_without_the_tools_there_is_nothing_to_report_or_remove(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netpol.shutil, "which", lambda name: None)
    assert netpol.host_leftovers() == []
    netpol.remove_from_host()  # nothing to do, no error
