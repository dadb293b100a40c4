"""The real node's NetworkPolicy engine: kube-network-policies (nftables + nfqueue) as a host process.

Why: the chart's NetworkPolicies (``charts/cmcp/templates/networkpolicies.yaml``) say that only
the gateway and the operator may reach an enclave's gRPC port; without an engine that enforces
them that sentence is untested. The engine is the SIG-Network reference implementation
``sigs.k8s.io/kube-network-policies`` built from its Go module (``binaries.ensure_netpol``,
``netpolbin/main.go``). ``LocalCluster(real_node=True, network_policy=True)`` runs it.

How it enforces: an ``inet`` nftables table (:data:`NFT_TABLE`) whose ``postrouting`` chain sends
new connections from or to a pod that a NetworkPolicy selects (set ``podips-v4``) to nfqueue
:data:`QUEUE_ID`; the engine reads the pods and policies from the apiserver and answers each
packet accept or drop. Pods on the node's bridge reach each other bridged: ``br_netfilter``
(``net.bridge.bridge-nf-call-iptables=1``) hands those frames to the same hooks. It fails
closed: the queue has no bypass flag, so while the table stands and no engine listens, the
kernel drops those packets (``clean_host`` in node.py removes the table, also after a crash).

Its identity: a client certificate for :data:`ENGINE_USER`, bound to a ClusterRole that may only
list and watch pods, namespaces and NetworkPolicies (upstream's DaemonSet role, nothing more).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

NFT_TABLE = "cmcp-e2e-netpol"  # not upstream's name, so a host's own engine is never touched
QUEUE_ID = 1019
QUEUE_STATS = Path("/proc/net/netfilter/nfnetlink_queue")
POD_SET = "podips-v4"
BRIDGE_NF_CALL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
ENGINE_USER = "cmcp-e2e:network-policy-engine"
ENGINE_ROLE = "cmcp-e2e-network-policy-engine"


def missing_prerequisites() -> str | None:
    """Why the engine cannot run on this machine, or None when it can."""
    if not shutil.which("nft"):
        return "the NetworkPolicy engine's table is inspected and removed with nft: apt-get install nftables"
    if not QUEUE_STATS.exists():
        return f"this kernel has no nfnetlink_queue ({QUEUE_STATS} is missing)"
    try:
        bridged = BRIDGE_NF_CALL.read_text().strip() == "1"
    except OSError:
        bridged = False
    if not bridged:
        return f"bridged pod traffic bypasses netfilter: needs br_netfilter with {BRIDGE_NF_CALL} = 1"
    return None


def engine_argv(binary: Path, kubeconfig: Path, node_name: str) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        f"--nfqueue-id={QUEUE_ID}",
        f"--nftables-table={NFT_TABLE}",
        "--v=1",
    ]


def rbac_objects() -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) of the engine's ClusterRole and its binding to :data:`ENGINE_USER`."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": ENGINE_ROLE},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
             "verbs": ["list", "watch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": ENGINE_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ENGINE_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ENGINE_USER}],
    }
    return [
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding),
    ]


def _nft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=False)


def table_present() -> bool:
    return shutil.which("nft") is not None and _nft("list", "table", "inet", NFT_TABLE).returncode == 0


def queue_bound(queue_id: int = QUEUE_ID) -> bool:
    """Whether a process listens on the nfqueue (its row in the kernel's queue stats)."""
    try:
        rows = QUEUE_STATS.read_text().splitlines()
    except OSError:
        return False
    return any(row.split()[:1] == [str(queue_id)] for row in rows)


def engine_ready() -> bool:
    """The engine synced its caches, wrote its table and listens on its queue."""
    return table_present() and queue_bound()


def enforced_pod_ips() -> set[str]:
    """The pod IPs whose new connections go through the engine now (its ``podips-v4`` set)."""
    proc = _nft("-j", "list", "set", "inet", NFT_TABLE, POD_SET)
    return set_elements(proc.stdout) if proc.returncode == 0 else set()


def set_elements(nft_json: str) -> set[str]:
    """The plain elements of the sets in ``nft -j list set`` output."""
    found: set[str] = set()
    for item in json.loads(nft_json).get("nftables", []):
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, str):
                found.add(element)
    return found


def host_leftovers() -> list[str]:
    return [f"nftables table inet {NFT_TABLE}"] if table_present() else []


def remove_table() -> None:
    """Delete the engine's table (and so its queue rules); idempotent. Call after the engine is dead:
    a live engine recreates it on its next sync."""
    if table_present():
        _nft("delete", "table", "inet", NFT_TABLE)
