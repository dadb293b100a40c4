"""cmcp_devkit.cluster.node_agent: the fake kubelet's pure parts.

Running pods against a real control plane is what ``tests/e2e`` does; here, what the agent
computes from a pod spec: $(VAR) expansion, mount path rewriting, the downward API, image to
executable, the pod status it reports, and its IP pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cmcp_core import initdata
from cmcp_devkit.cluster import node_agent
from cmcp_devkit.cluster.node_agent import (
    INITDATA_ANNOTATION,
    KNOWN_IMAGES,
    ContainerRun,
    NodeAgent,
    PodWorker,
    expand,
    image_repo,
    resolve_field,
    resolve_resource,
    rewrite_paths,
)
from cmcp_devkit.cluster.pki import ClusterPKI
from cmcp_devkit.initdata import render_initdata
from tests.paths import EXAMPLES

POD: dict[str, Any] = {
    "metadata": {"name": "p1", "namespace": "ns1", "uid": "0123456789abcdef",
                 "labels": {"b": "2", "a": "1"}, "annotations": {"note": "x"}},
    "spec": {"nodeName": "tdx-node-1", "serviceAccountName": "sa1",
             "containers": [{"name": "main", "image": "ghcr.io/cmcp/cmcp-gateway:1.0"}]},
    "status": {"podIP": "198.18.1.10", "podIPs": [{"ip": "198.18.1.10"}, {"ip": "fd00::a"}],
               "hostIP": "198.19.1.1", "hostIPs": [{"ip": "198.19.1.1"}]},
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return ClusterPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def agent(pki: ClusterPKI, tmp_path: Path) -> NodeAgent:
    admin = pki.issue("admin", "admin")
    node = pki.issue("node", "system:node:tdx-node-1")
    (tmp_path / "bin").mkdir()
    return NodeAgent({
        "server": "https://198.19.1.1:6443", "ca": str(pki.ca.cert),
        "admin": {"cert": str(admin.cert), "key": str(admin.key)},
        "network": {"pod_prefix": "198.18.1.", "netns_path": None},
        "pods_dir": str(tmp_path / "pods"), "bin_dir": str(tmp_path / "bin"), "python": "/py",
        "repo_root": "/repo",
        "nodes": [{"name": "tdx-node-1", "tee": "tdx", "cert": str(node.cert), "key": str(node.key)}],
    })


def _worker(agent: NodeAgent, **spec: Any) -> PodWorker:
    pod = {"metadata": dict(POD["metadata"]), "spec": {**POD["spec"], **spec}, "status": {}}
    return PodWorker(agent.nodes[0], pod)


# --- $(VAR) expansion and paths ----------------------------------------------------------------
# (the first tests here moved from tests/e2e/test_cluster_agent_rules.py: they need no cluster)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y/two/z"),
        ("$$(A)", "$(A)"),  # escaped
        ("$(MISSING)", "$(MISSING)"),  # unknown refs stay
        ("$(A", "$(A"),  # unterminated
        ("cost: $5", "cost: $5"),
        ("$$$(A)", "$1"),
        ("", ""),
        ("cost $5 $", "cost $5 $"),  # a trailing $ stays
    ],
)
def test_expand_follows_kubelet_semantics(value: str, expected: str) -> None:
    assert expand(value, {"A": "1", "B": "/two/"}) == expected


def test_rewrite_paths_maps_mount_prefixes_only_at_start_or_after_equals() -> None:
    mounts = [("/etc/cmcp/bundle", "/r/etc/cmcp/bundle"), ("/etc/cmcp", "/r/etc/cmcp")]
    assert rewrite_paths("/etc/cmcp/bundle", mounts) == "/r/etc/cmcp/bundle"
    assert rewrite_paths("/etc/cmcp/bundle/a.cedar", mounts) == "/r/etc/cmcp/bundle/a.cedar"
    assert rewrite_paths("--bundle=/etc/cmcp/bundle", mounts) == "--bundle=/r/etc/cmcp/bundle"
    assert rewrite_paths("/etc/cmcp/other", mounts) == "/r/etc/cmcp/other"
    assert rewrite_paths("/etc/cmcpx", mounts) == "/etc/cmcpx"  # not a path prefix
    assert rewrite_paths("see /etc/cmcp", mounts) == "see /etc/cmcp"  # mid-string: untouched


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("ghcr.io/acme/cmcp-enclave:0.1.0", "ghcr.io/acme/cmcp-enclave"),
        ("localhost:5000/cmcp-gateway@sha256:abc", "localhost:5000/cmcp-gateway"),
        ("cmcp-test/http-echo", "cmcp-test/http-echo"),
        ("nginx:1.27", "nginx"),
        ("cmcp-gateway", "cmcp-gateway"),
        ("ghcr.io/cmcp/enclave@sha256:" + "0" * 64, "ghcr.io/cmcp/enclave"),
        ("localhost:5000/cmcp-guard:dev", "localhost:5000/cmcp-guard"),  # a registry port is not a tag
    ],
)
def test_image_repo_strips_tag_and_digest(image: str, repo: str) -> None:
    assert image_repo(image) == repo


def test_resolve_field_reads_downward_api_paths() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "uid": "u",
            "labels": {"b": "2", "a": "1"},
            "annotations": {},
        },
        "spec": {"nodeName": "tdx-node-1"},
        "status": {"podIP": "198.18.1.10", "podIPs": [{"ip": "198.18.1.10"}]},
    }
    assert resolve_field(pod, "metadata.labels['a']") == "1"
    assert resolve_field(pod, "metadata.labels") == 'a="1"\nb="2"\n'
    assert resolve_field(pod, "spec.nodeName") == "tdx-node-1"
    assert resolve_field(pod, "status.podIPs") == "198.18.1.10"
    with pytest.raises(ValueError):
        resolve_field(pod, "spec.containers")


async def test_grpc_probe_reads_the_health_status() -> None:
    """SERVING -> success; NOT_SERVING, an unknown service or no server -> failure."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("cmcp.Enclave", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    worker = SimpleNamespace(ip="127.0.0.1")  # _grpc_probe only needs the pod IP
    try:
        probe = PodWorker._grpc_probe
        assert await probe(worker, None, {"port": port}, 5.0) is True  # type: ignore[arg-type]
        assert await probe(worker, None, {"port": port, "service": "cmcp.Enclave"}, 5.0) is False  # type: ignore[arg-type]
        assert await probe(worker, None, {"port": port, "service": "nope"}, 5.0) is False  # type: ignore[arg-type]
    finally:
        await server.stop(None)
    assert await PodWorker._grpc_probe(worker, None, {"port": port}, 1.0) is False  # type: ignore[arg-type]


def test_rewrite_paths_ignores_a_trailing_slash_and_maps_one_mount() -> None:
    mounts = [("/etc/cmcp/", "/pods/p/volumes/cfg"), ("/data", "/pods/p/volumes/data")]
    assert rewrite_paths("/etc/cmcp/x.yaml", mounts) == "/pods/p/volumes/cfg/x.yaml"
    assert rewrite_paths("--config=/etc/cmcp", mounts) == "--config=/pods/p/volumes/cfg"
    assert rewrite_paths("/etc/cmcpx/y", mounts) == "/etc/cmcpx/y"  # a prefix, not the mount
    assert rewrite_paths("x/etc/cmcp/y", mounts) == "x/etc/cmcp/y"
    assert rewrite_paths("/data/a", mounts) == "/pods/p/volumes/data/a"


# --- downward API --------------------------------------------------------------------------------
def test_resolve_field_names_ips_and_missing_labels() -> None:
    assert resolve_field(POD, "metadata.name") == "p1"
    assert resolve_field(POD, "metadata.namespace") == "ns1"
    assert resolve_field(POD, "status.podIPs") == "198.18.1.10,fd00::a"  # every IP, comma-separated
    assert resolve_field(POD, "status.hostIP") == "198.19.1.1"
    assert resolve_field(POD, "metadata.labels['nope']") == ""
    with pytest.raises(ValueError, match=r"unsupported fieldRef spec\.hostNetwork"):
        resolve_field(POD, "spec.hostNetwork")


def test_resolve_resource_prefers_the_container_then_the_node() -> None:
    container = {"resources": {"limits": {"memory": "64Mi"}}}
    alloc = {"cpu": "8", "memory": "32Gi"}
    assert resolve_resource(container, {"resource": "limits.memory"}, alloc) == "64Mi"
    assert resolve_resource(container, {"resource": "limits.cpu"}, alloc) == "8"
    assert resolve_resource(None, {"resource": "requests.ephemeral-storage"}, alloc) == "0"


def test_container_status_json(tmp_path: Path) -> None:
    run = ContainerRun({"name": "c", "image": "cmcp-guard:1"})
    doc = run.status_json()
    assert doc["name"] == "c" and doc["imageID"] == "cmcp-e2e://cmcp-guard"
    assert doc["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert "containerID" not in doc  # no process yet


def test_write_file_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "token"
    node_agent._write_file(target, b"one")
    node_agent._write_file(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["token"]


# --- the agent and its pods ------------------------------------------------------------------------
def test_slots_map_to_pod_ips_and_are_reused(agent: NodeAgent) -> None:
    assert agent.api_host == "198.19.1.1" and agent.api_port == "6443"
    first, second = agent.alloc_slot(), agent.alloc_slot()
    assert (first, second) == (0, 1)
    assert agent.net_pod_ip(second) == "198.18.1.11"
    agent.free_slot(first)
    assert agent.alloc_slot() == first


def test_the_pool_runs_out_with_an_error(agent: NodeAgent) -> None:
    for _ in range(240):
        agent.alloc_slot()
    with pytest.raises(RuntimeError, match="pod IP pool exhausted"):
        agent.alloc_slot()


def test_argv_for_known_images_test_image_and_commands(agent: NodeAgent) -> None:
    worker = _worker(agent)
    assert worker.ip == "198.18.1.10" and worker.key == "ns1/p1"
    for name in KNOWN_IMAGES:
        entry, args = worker._argv_base({"image": f"ghcr.io/x/{name}:1", "args": ["--a"]})
        assert entry == [str(Path(agent.bin_dir) / name)] and args == ["--a"]
    entry, _ = worker._argv_base({"image": "cmcp-test/http-echo:latest"})
    assert entry == ["/py", "-m", "cmcp_devkit.cluster.http_echo"]
    entry, _ = worker._argv_base({"image": "localhost/cmcp-demo:0.1.0"})
    assert entry == ["/py", "-m", "cmcp_devkit.upstream"]
    assert worker._argv_base({"image": "cmcp-guard", "command": ["python3", "-m", "x"], "args": ["y"]}) == (
        ["/py"], ["-m", "x", "y"])
    assert worker._argv_base({"image": "cmcp-guard", "command": ["/bin/tool", "a"]}) == (
        [], ["/bin/tool", "a"])  # a path the spec chose is left to mount rewriting


def test_an_unknown_image_fails_the_pod_like_an_image_pull(agent: NodeAgent) -> None:
    worker = _worker(agent)
    with pytest.raises(node_agent._PodFailure) as info:
        worker._argv_base({"image": "docker.io/library/nginx:1"})
    assert info.value.reason == "ErrImagePull" and "nginx" in info.value.message


def test_base_env_points_pods_at_the_apiserver_and_the_node_tee(agent: NodeAgent,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)
    env = _worker(agent)._base_env()
    assert env["KUBERNETES_SERVICE_HOST"] == "198.19.1.1" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["CMCP_SIM_PLATFORM"] == "tdx" and env["PYTHONPATH"] == "/repo"
    monkeypatch.setenv("PYTHONPATH", "/worktree/core")  # pods run the harness's code (a worktree's)
    assert _worker(agent)._base_env()["PYTHONPATH"] == "/repo:/worktree/core"
    assert env["PATH"].split(":")[0] == agent.bin_dir


def test_initdata_annotation_is_measured_or_fails_the_pod(agent: NodeAgent) -> None:
    raw = render_initdata(EXAMPLES / "realistic")
    good = _worker(agent)
    good.pod["metadata"]["annotations"] = {INITDATA_ANNOTATION: initdata.encode_annotation(raw)}
    good._measure_initdata()
    assert Path(good.base_env["CMCP_INITDATA"]).read_bytes() == raw
    assert good.base_env["CMCP_SIM_HOST_DATA"]
    bad = _worker(agent)
    bad.pod["metadata"]["annotations"] = {INITDATA_ANNOTATION: "not initdata"}
    with pytest.raises(node_agent._PodFailure) as info:
        bad._measure_initdata()
    assert info.value.reason == "InitdataInvalid"
    plain = _worker(agent)
    plain._measure_initdata()
    assert "CMCP_INITDATA" not in plain.base_env


def test_status_of_a_pending_pod(agent: NodeAgent) -> None:
    status = _worker(agent).compute_status()
    assert status["phase"] == "Pending" and status["podIP"] == "198.18.1.10"
    ready = {c["type"]: c for c in status["conditions"]}
    assert ready["Ready"]["status"] == "False" and ready["Ready"]["reason"] == "ContainersNotReady"
    assert ready["Initialized"]["status"] == "True"  # no init containers


def test_status_waits_for_readiness_gates(agent: NodeAgent) -> None:
    worker = _worker(agent, readinessGates=[{"conditionType": "cmcp.dev/attested"}])
    worker.containers[0].ready = True
    worker.containers[0].state = {"running": {"startedAt": "t"}}
    status = worker.compute_status()
    ready = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Running"
    assert ready["ContainersReady"]["status"] == "True"
    assert ready["Ready"]["status"] == "False" and ready["Ready"]["reason"] == "ReadinessGatesNotReady"
    worker.pod["status"] = {"conditions": [{"type": "cmcp.dev/attested", "status": "True"}]}
    assert {c["type"]: c["status"] for c in worker.compute_status()["conditions"]}["Ready"] == "True"


def test_status_of_a_failed_pod_names_the_reason(agent: NodeAgent) -> None:
    worker = _worker(agent)
    worker.failed = ("ErrImagePull", "unknown image")
    status = worker.compute_status()
    assert status["phase"] == "Failed" and status["reason"] == "ErrImagePull"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ErrImagePull",
                                                                   "message": "unknown image"}}


@pytest.mark.parametrize(("policy", "codes", "phase"), [
    ("Never", [0], "Succeeded"),
    ("Never", [1], "Failed"),
    ("OnFailure", [1], "Running"),  # it will be restarted
])
def test_status_of_ended_containers(agent: NodeAgent, policy: str, codes: list[int], phase: str) -> None:
    worker = _worker(agent, restartPolicy=policy)
    worker.containers[0].state = {"terminated": {"exitCode": codes[0]}}
    assert worker.compute_status()["phase"] == phase


def test_main_without_a_config_prints_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "cmcp_devkit.cluster.node_agent"], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ})
    assert proc.returncode == 2
    assert "usage: python -m cmcp_devkit.cluster.node_agent <config.json>" in proc.stderr
