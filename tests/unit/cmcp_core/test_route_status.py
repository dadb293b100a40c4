"""``cmcp_core.route_status``: the McpRoute status contract written by the operator, read by all."""

from __future__ import annotations

from typing import Any

import pytest

from cmcp_core import crd
from cmcp_core.route_status import (
    DEFAULT_PORT,
    GROUP,
    PLURAL,
    VERSION,
    PodStatus,
    RouteRef,
    RouteStatus,
    RouteTarget,
    endpoints_from_status,
    short_hash,
)

BUNDLE = "sha256:" + "ab" * 32
INITDATA = "sha256:" + "cd" * 32


def test_names_the_route_crd() -> None:
    assert (GROUP, VERSION, PLURAL) == (crd.GROUP, crd.VERSION, crd.ROUTE_PLURAL)


def test_route_ref_parse_and_str() -> None:
    ref = RouteRef.parse("team-a/search")
    assert ref == RouteRef("team-a", "search")
    assert str(ref) == "team-a/search"


@pytest.mark.parametrize("text", ["search", "/search", "team-a/", "a/b/c", ""])
def test_route_ref_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        RouteRef.parse(text)


def test_short_hash() -> None:
    assert short_hash(BUNDLE) == "sha256:" + BUNDLE[7:19]
    assert short_hash(BUNDLE, 4) == "sha256:abab"
    assert short_hash("untagged") == "untagged"


def _full() -> RouteStatus:
    pods = (
        PodStatus("p0", "u0", "n0", "10.0.0.1", True, platform="snp", current=True,
                  public_key_jwk={"kty": "OKP", "crv": "Ed25519", "x": "AA"}, assurance="hardware"),
        PodStatus("p1", "u1", "n1", "10.0.0.2:6000", False, reason="AttestationFailed", message="m"),
    )
    return RouteStatus(replicas=2, attested_replicas=1, ready_replicas=1, updated_replicas=2,
                       attested_summary="1/2", pods=pods, target=RouteTarget(BUNDLE, INITDATA),
                       enforcement_mode="enforce", catalog_hash="sha256:cc",
                       previous=RouteTarget(INITDATA, BUNDLE), observed_generation=4,
                       service_name="svc", deployment_name="dep",
                       conditions=({"type": "Ready", "status": "True"},))


def test_round_trip_through_the_status_dict() -> None:
    status = _full()
    doc = status.to_status()
    assert doc["bundleHash"] == BUNDLE and doc["bundleHashShort"] == short_hash(BUNDLE)
    assert doc["previous"] == {"bundleHash": INITDATA, "initdataDigest": BUNDLE}
    assert doc["pods"][1]["reason"] == "AttestationFailed" and "platform" not in doc["pods"][1]
    assert RouteStatus.from_status(doc) == status


def test_zero_status_still_writes_counts_and_clears_previous() -> None:
    doc = RouteStatus().to_status()
    assert doc == {"replicas": 0, "attestedReplicas": 0, "readyReplicas": 0, "updatedReplicas": 0,
                   "attestedSummary": "", "pods": [], "previous": None, "gpu": None}
    assert RouteStatus.from_status(doc) == RouteStatus()


@pytest.mark.parametrize("doc", [None, [], "status", 3, {}])
def test_missing_or_non_object_status_reads_as_empty(doc: Any) -> None:
    assert RouteStatus.from_status(doc) == RouteStatus()


def test_hostile_status_never_raises_and_wrong_types_read_as_absent() -> None:
    doc = {"replicas": True, "attestedReplicas": "3", "pods": [1, "x", {"attested": "true",
           "address": 7, "current": "yes", "publicKeyJwk": ["x"]}], "bundleHash": BUNDLE,
           "previous": {"bundleHash": BUNDLE}, "conditions": [{"type": "Ready"}, "junk"],
           "observedGeneration": "4", "serviceName": 1}
    status = RouteStatus.from_status(doc)
    assert status.replicas == 0 and status.attested_replicas == 0
    assert status.pods == (PodStatus("", "", "", "", False),)
    assert status.target is None and status.previous is None  # both hashes are needed
    assert status.conditions == ({"type": "Ready"},)
    assert status.observed_generation is None and status.service_name is None


def test_endpoints_are_the_attested_pods_with_a_default_port() -> None:
    doc = {"pods": [
        {"address": "10.0.0.1", "attested": True},
        {"address": "10.0.0.2:7000", "attested": True},
        {"address": "10.0.0.3", "attested": False},
        {"address": "10.0.0.4", "attested": "true"},  # only a literal true counts
        {"address": "", "attested": True},
    ]}
    assert endpoints_from_status(doc) == [f"10.0.0.1:{DEFAULT_PORT}", "10.0.0.2:7000"]
    assert endpoints_from_status(None) == []


def test_status_supplies_addresses_only() -> None:
    """Keys published in the status are never read: only attested entries' addresses come out."""
    status = {
        "pods": [
            {"address": "10.0.0.1", "attested": True, "keyThumbprint": "x", "publicKeyJwk": {"kty": "OKP"}},
            {"address": "10.0.0.2", "attested": False},
        ]
    }
    assert endpoints_from_status(status) == ["10.0.0.1:50051"]
    assert RouteRef.parse("cmcp/demo") == RouteRef("cmcp", "demo")
    for bad in ("demo", "/demo", "cmcp/", "a/b/c"):
        with pytest.raises(ValueError):
            RouteRef.parse(bad)


def test_a_boolean_generation_is_not_a_generation() -> None:
    assert RouteStatus.from_status({"observedGeneration": True}).observed_generation is None
    assert RouteStatus.from_status({"observedGeneration": 3}).observed_generation == 3
