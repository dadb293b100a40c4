"""Registered-only Nodes of the local cluster: Node objects with no kubelet, kept Ready by their Leases.

    python -m cmcp_devkit.cluster.registered_nodes <config.json>   (started by control_plane.LocalCluster)

Why: the machine runs one real node (node.py), yet scheduling tests need a node that was eligible and
was not chosen (a TDX pod must skip a plain node), or that holds a pod Pending. A Node object is
enough for the scheduler; the node lifecycle controller keeps it Ready while its Lease is renewed,
so this process registers each node with its own ``system:node:<name>`` certificate (the Node
authorizer and NodeRestriction apply, as to a kubelet), has the admin set its feature labels (as
Node Feature Discovery would: nodes may not set ``*.kubernetes.io`` labels themselves) and renews
the Leases. Nothing here runs a pod: every node registers with :data:`REGISTERED_NODE_TAINT`
(NoSchedule), so only a pod that tolerates it can be bound here, and such a pod never runs (nor
finishes deleting: no kubelet confirms it), which is why only scheduling tests tolerate it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .kube import Kube, KubeError, ssl_context

Obj = dict[str, Any]

REGISTERED_NODE_TAINT = {"key": "cmcp.dev/registered-only", "value": "true", "effect": "NoSchedule"}
# Tolerating it lets a pod be bound to a registered-only node (scheduling tests only).
REGISTERED_NODE_TOLERATION = {"key": REGISTERED_NODE_TAINT["key"], "operator": "Exists",
                              "effect": "NoSchedule"}
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


@dataclass(frozen=True)
class NodeSpec:
    """One registered-only Node: its name, its feature labels and what it offers the scheduler."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    cpu: str = "8"
    memory: str = "32Gi"
    pods: str = "110"


def node_object(spec: NodeSpec) -> Obj:
    """The Node as its own identity creates it: standard labels, the registered-only taint."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": {
                "kubernetes.io/hostname": spec.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"taints": [dict(REGISTERED_NODE_TAINT)]},
    }


def node_status(spec: NodeSpec, address: str, now: str) -> Obj:
    """A Ready status with the capacity the scheduler weighs; it names no runtime because none runs."""
    capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": spec.pods, "ephemeral-storage": "100Gi"}
    conditions = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            {"type": kind, "status": status, "reason": reason, "message": "registered-only node (no kubelet)",
             "lastHeartbeatTime": now, "lastTransitionTime": now}
            for kind, status, reason in conditions
        ],
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": spec.name}],
        "nodeInfo": {
            "machineID": spec.name, "systemUUID": spec.name, "bootID": spec.name, "kernelVersion": "",
            "osImage": "cmcp registered-only node", "containerRuntimeVersion": "", "kubeletVersion": "",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }


def lease_object(name: str, node_uid: str, renew_time: str) -> Obj:
    """The node's Lease, owned by its Node (deleted with it, as a kubelet's is)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew_time},
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RegisteredNode:
    """One node's registration and Lease, through a client acting as ``system:node:<name>``."""

    def __init__(self, spec: NodeSpec, api: Kube, admin: Kube, address: str) -> None:
        self.spec, self.api, self.admin, self.address = spec, api, admin, address

    def register(self) -> None:
        try:
            self.api.create("/api/v1/nodes", node_object(self.spec))
        except KubeError as exc:
            if exc.status != 409:
                raise
        if self.spec.labels:
            self.admin.patch(f"/api/v1/nodes/{self.spec.name}", {"metadata": {"labels": self.spec.labels}})
        self.api.patch(f"/api/v1/nodes/{self.spec.name}/status",
                       {"status": node_status(self.spec, self.address, _now())}, kind="strategic")

    def renew_lease(self) -> None:
        name, renew_time = self.spec.name, _now_micro()
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew_time}
        try:
            self.api.patch(f"{LEASES}/{name}", {"spec": spec})
        except KubeError as exc:
            if exc.status != 404:
                raise
            uid = self.api.get(f"/api/v1/nodes/{name}")["metadata"]["uid"]
            self.api.create(LEASES, lease_object(name, uid, renew_time))


def run(config: Obj, stop: threading.Event) -> None:
    """Register every node, then renew their Leases until ``stop`` is set; a failed renewal is logged and
    retried (the node lifecycle controller marks the node NotReady if that goes on past the Lease)."""
    server, ca = config["server"], config["ca"]
    address = server.split("://", 1)[1].rsplit(":", 1)[0]
    admin = Kube(server, ssl_context(ca, config["admin"]["cert"], config["admin"]["key"]))
    nodes = [
        RegisteredNode(NodeSpec(n["name"], n.get("labels", {}), n.get("cpu", "8"), n.get("memory", "32Gi"),
                                n.get("pods", "110")),
                       Kube(server, ssl_context(ca, n["cert"], n["key"])), admin, address)
        for n in config["nodes"]
    ]
    for node in nodes:
        node.register()
    print(f"registered {', '.join(n.spec.name for n in nodes)}", flush=True)
    while not stop.is_set():
        for node in nodes:
            try:
                node.renew_lease()
            except (KubeError, httpx.HTTPError) as exc:
                print(f"node {node.spec.name}: lease renewal failed: {exc!r}", flush=True)
        stop.wait(RENEW_EVERY)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cmcp_devkit.cluster.registered_nodes <config.json>", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    run(json.loads(Path(args[0]).read_text()), stop)
    print(f"stopped (pid {os.getpid()})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
