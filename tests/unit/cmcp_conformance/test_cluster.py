"""Reading an McpRoute for the cluster target: which pods are usable, which audience, and bad input."""

from __future__ import annotations

import pytest

from cmcp_conformance.cluster import RouteRef, attested_addresses, route_audience

ROUTE = {
    "metadata": {"namespace": "cmcp", "name": "conformance"},
    "spec": {"upstream": {"service": {"name": "upstream", "port": 8080}}},
    "status": {
        "bundleHash": "sha256:" + "a" * 64,
        "pods": [
            {"pod": "a", "address": "127.0.0.3:50051", "attested": True},
            {"pod": "b", "address": "127.0.0.4", "attested": True},
            {"pod": "c", "address": "127.0.0.5:50051", "attested": False, "reason": "BINDING_NONCE_MISMATCH"},
            {"pod": "d", "attested": True},
        ],
    },
}


def test_only_attested_pods_with_addresses_are_used() -> None:
    assert attested_addresses(ROUTE) == ["127.0.0.3:50051", "127.0.0.4:50051"]
    assert attested_addresses({"status": {}}) == []
    assert attested_addresses({}) == []


def test_audience_follows_the_crd_rules() -> None:
    assert route_audience(ROUTE) == "http://upstream.cmcp.svc:8080/mcp"
    assert route_audience({"spec": {"audience": "aud-1", "upstream": {"url": "http://x/mcp"}}}) == "aud-1"
    assert route_audience({"spec": {"upstream": {"url": "https://up.example/mcp"}}}) == "https://up.example/mcp"
    assert route_audience({"spec": {}}) is None


@pytest.mark.parametrize("text", ["conformance", "/name", "ns/", ""])
def test_route_reference_needs_namespace_and_name(text: str) -> None:
    with pytest.raises(ValueError):
        RouteRef.parse(text)
    assert RouteRef.parse("cmcp/conformance") == RouteRef("cmcp", "conformance")
