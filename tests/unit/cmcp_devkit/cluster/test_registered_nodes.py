"""cmcp_devkit.cluster.registered_nodes: registration and Lease renewal of the registered-only nodes.

The apiserver's answers come from an ``httpx.MockTransport`` (the subject is which objects are sent, by
which identity); that the scheduler keeps ordinary pods off these nodes and the node lifecycle
controller keeps them Ready is shown against the real plane in ``tests/e2e/test_cluster_scheduling.py``
and ``tests/e2e/test_cluster_lifecycle.py``."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.cluster.registered_nodes import (
    LEASES,
    REGISTERED_NODE_TAINT,
    REGISTERED_NODE_TOLERATION,
    NodeSpec,
    RegisteredNode,
    lease_object,
    main,
    node_object,
    node_status,
)

Seen = list[tuple[str, str, str, object]]  # identity, method, path, body


def _kube(identity: str, seen: Seen, answer: Callable[[httpx.Request], httpx.Response]) -> Kube:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((identity, request.method, request.url.path, body))
        return answer(request)

    kube = Kube.__new__(Kube)
    kube.server = "https://198.19.3.1:6443"
    kube.http = httpx.Client(base_url=kube.server, transport=httpx.MockTransport(handler))
    return kube


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"metadata": {"uid": "uid-1"}})


TDX = {"intel.feature.node.kubernetes.io/tdx": "true"}


def test_a_node_registers_as_itself_tainted_and_the_admin_sets_its_feature_labels() -> None:
    seen: Seen = []
    spec = NodeSpec("plain-node-1", dict(TDX))
    node = RegisteredNode(spec, _kube("node", seen, _ok), _kube("admin", seen, _ok), "198.19.3.1")
    node.register()
    [create, labels, status] = seen
    assert create[:3] == ("node", "POST", "/api/v1/nodes")
    assert create[3] == node_object(spec)
    assert labels == ("admin", "PATCH", "/api/v1/nodes/plain-node-1", {"metadata": {"labels": TDX}})
    assert status[:3] == ("node", "PATCH", "/api/v1/nodes/plain-node-1/status")
    ready = next(c for c in status[3]["status"]["conditions"] if c["type"] == "Ready")  # type: ignore[index]
    assert ready["status"] == "True"


def test_every_registered_node_carries_the_no_schedule_taint() -> None:
    """A pod bound to a node without a kubelet never runs and never finishes deleting: only a pod that
    tolerates the taint (a scheduling test) may be bound there."""
    obj = node_object(NodeSpec("n1"))
    assert obj["spec"]["taints"] == [REGISTERED_NODE_TAINT]
    assert REGISTERED_NODE_TAINT["effect"] == "NoSchedule"
    assert REGISTERED_NODE_TOLERATION["key"] == REGISTERED_NODE_TAINT["key"]
    assert obj["metadata"]["labels"]["kubernetes.io/hostname"] == "n1"
    obj["spec"]["taints"].clear()
    assert node_object(NodeSpec("n1"))["spec"]["taints"] == [REGISTERED_NODE_TAINT]  # each node its own copy


def test_status_offers_the_specs_capacity_and_names_no_runtime() -> None:
    spec = NodeSpec("n1", cpu="2", memory="1Gi", pods="5")
    status = node_status(spec, "198.19.3.1", "2026-01-01T00:00:00Z")
    assert status["allocatable"] == {"cpu": "2", "memory": "1Gi", "pods": "5", "ephemeral-storage": "100Gi"}
    assert {"type": "InternalIP", "address": "198.19.3.1"} in status["addresses"]
    assert status["nodeInfo"]["containerRuntimeVersion"] == ""


def test_re_registering_an_existing_node_is_fine_but_a_refusal_is_not() -> None:
    seen: Seen = []

    def conflict(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409 if request.method == "POST" else 200, json={})

    RegisteredNode(NodeSpec("n1"), _kube("node", seen, conflict), _kube("admin", seen, _ok), "h").register()
    assert [s[1] for s in seen] == ["POST", "PATCH"]  # no labels to set: no admin call
    refused = RegisteredNode(NodeSpec("n1"), _kube("node", [], lambda r: httpx.Response(403, text="no")),
                             _kube("admin", [], _ok), "h")
    with pytest.raises(KubeError) as info:
        refused.register()
    assert info.value.status == 403


def test_a_lease_is_renewed_and_created_owned_by_its_node_when_missing() -> None:
    seen: Seen = []
    leases: set[str] = set()

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH" and request.url.path.startswith(LEASES) and "n1" not in leases:
            return httpx.Response(404, json={})
        if request.method == "POST":
            leases.add("n1")
        return _ok(request)

    node = RegisteredNode(NodeSpec("n1"), _kube("node", seen, api), _kube("admin", seen, _ok), "h")
    node.renew_lease()
    node.renew_lease()
    assert [(s[0], s[1], s[2]) for s in seen] == [
        ("node", "PATCH", f"{LEASES}/n1"), ("node", "GET", "/api/v1/nodes/n1"), ("node", "POST", LEASES),
        ("node", "PATCH", f"{LEASES}/n1"),
    ]
    created = seen[2][3]
    assert isinstance(created, dict)
    renew_time = created["spec"]["renewTime"]
    assert created == lease_object("n1", "uid-1", renew_time)
    assert created["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    failing = RegisteredNode(NodeSpec("n1"), _kube("node", [], lambda r: httpx.Response(500, text="x")),
                             _kube("admin", [], _ok), "h")
    with pytest.raises(KubeError):
        failing.renew_lease()  # the loop in run() logs it and retries


def test_main_needs_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: python -m cmcp_devkit.cluster.registered_nodes" in capsys.readouterr().err
