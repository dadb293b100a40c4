"""The real node's NetworkPolicy engine: kube-network-policies (nftables + nfqueue) as a host process.

Why: the chart's NetworkPolicies (``charts/cmcp/templates/networkpolicies.yaml``) say that only
the gateway and the operator may reach an enclave's gRPC port; without an engine that enforces
them that sentence is untested. The engine is the SIG-Network reference implementation
``sigs.k8s.io/kube-network-policies`` built from its Go module (``binaries.ensure_netpol``,
``netpolbin/main.go``). ``LocalCluster(real_node=True, network_policy=True)`` runs it.

How it enforces: the first packet of every new connection from or to a pod of the node goes to
nfqueue :data:`QUEUE_ID`; the engine reads the pods, namespaces and policies from the apiserver
and answers each such packet accept or drop (its own policy evaluation, unchanged). Pods on the
node's bridge reach each other bridged: ``br_netfilter`` (``net.bridge.bridge-nf-call-iptables=1``)
hands those frames to the same hooks.

Who sends the packets to the queue: upstream's engine writes an ``inet`` nftables table
(:data:`NFT_TABLE`) with native ``queue`` rules, and this machine's kernel has no ``nft_queue``
(``CONFIG_NFT_QUEUE`` is not set: its batch fails with ``netlink receive: no such file or
directory`` and no table appears) but does have the xtables ``NFQUEUE`` target. So the node
installs the same steering itself as an iptables(-nft) chain :data:`STEERING_CHAIN` in
``mangle POSTROUTING`` (:func:`steering_rules`: skip root's own sockets and established flows,
queue the rest of the pod subnet). It queues every new pod connection rather than only those of
policy-selected pods (upstream's ``podips-v4`` set lives in the table that cannot load); the
engine allows pods no policy selects. On a kernel with ``nft_queue`` the engine's table appears
too and a packet is judged twice, with the same verdict.

It fails closed: the queue has no bypass flag, so while the steering stands and no engine
listens, the kernel drops new pod connections; ``clean_host`` in node.py removes the chain (and
the engine's table, where the kernel let it write one), also after a crash.

Its identity: a client certificate for :data:`ENGINE_USER`, bound to a ClusterRole that may only
list and watch pods, namespaces and NetworkPolicies (upstream's DaemonSet role, nothing more).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

NFT_TABLE = "cmcp-e2e-netpol"  # not upstream's name, so a host's own engine is never touched
STEERING_CHAIN = "CMCP-NETPOL"
STEERING_TABLE = "mangle"
QUEUE_ID = 1019
QUEUE_STATS = Path("/proc/net/netfilter/nfnetlink_queue")
BRIDGE_NF_CALL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
ENGINE_USER = "cmcp-e2e:network-policy-engine"
ENGINE_ROLE = "cmcp-e2e-network-policy-engine"


def missing_prerequisites() -> str | None:
    """Why the engine cannot run on this machine, or None when it can."""
    if not shutil.which("iptables"):
        return "the packets go to the engine's queue through an iptables chain: apt-get install iptables"
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
    """The engine synced its caches and listens on its queue, and packets are steered to it."""
    return queue_bound() and steering_present()


def steering_rules(pod_subnet: str, queue_id: int = QUEUE_ID) -> list[list[str]]:
    """The rules of :data:`STEERING_CHAIN` (``iptables -A`` words), upstream's order: root's own
    sockets (the kubelet's probes) and established or related packets pass; the first packet of
    any other connection from or to the pod subnet goes to the queue, without bypass."""
    queue = ["-j", "NFQUEUE", "--queue-num", str(queue_id)]
    return [
        ["-m", "owner", "--uid-owner", "0", "-j", "RETURN"],
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
        ["-s", pod_subnet, *queue],
        ["-d", pod_subnet, *queue],
    ]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "-t", STEERING_TABLE, *args], capture_output=True, text=True,
                          check=False)


def install_steering(pod_subnet: str) -> None:
    """Create :data:`STEERING_CHAIN` and jump to it from ``POSTROUTING`` (after :func:`remove_steering`)."""
    remove_steering()
    steps = [["-N", STEERING_CHAIN]]
    steps += [["-A", STEERING_CHAIN, *rule] for rule in steering_rules(pod_subnet)]
    steps.append(["-A", "POSTROUTING", "-j", STEERING_CHAIN])
    for step in steps:
        proc = _iptables(*step)
        if proc.returncode != 0:
            raise OSError(f"iptables -t {STEERING_TABLE} {' '.join(step)}: {proc.stderr.strip()}")


def steering_present() -> bool:
    return shutil.which("iptables") is not None and _iptables("-S", STEERING_CHAIN).returncode == 0


def remove_steering() -> None:
    """The jump from ``POSTROUTING`` (every copy), then the chain; idempotent."""
    if shutil.which("iptables") is None:
        return
    while _iptables("-D", "POSTROUTING", "-j", STEERING_CHAIN).returncode == 0:
        pass
    _iptables("-F", STEERING_CHAIN)
    _iptables("-X", STEERING_CHAIN)


def host_leftovers() -> list[str]:
    out = [f"iptables -t {STEERING_TABLE} chain {STEERING_CHAIN}"] if steering_present() else []
    return out + ([f"nftables table inet {NFT_TABLE}"] if table_present() else [])


def remove_from_host() -> None:
    """Delete the steering chain and the engine's table; idempotent. Call after the engine is dead:
    a live engine recreates its table on its next sync."""
    remove_steering()
    if table_present():
        _nft("delete", "table", "inet", NFT_TABLE)
