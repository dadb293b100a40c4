"""The node agent's pure rules (no cluster): kubelet $(VAR) expansion, mount-path mapping, images."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cmcp_devkit.cluster.node_agent import PodWorker, expand, image_repo, resolve_field, rewrite_paths


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
