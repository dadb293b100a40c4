"""The PolicyBundle reconcile against an in-memory Kube: what it publishes, the exact status
and conditions it patches, the Events it posts, and the in-use finalizer on deletion."""

from __future__ import annotations

from typing import Any

import pytest

from cmcp_core.bundle import load_bundle, read_bundle_files
from cmcp_core.route_status import short_hash
from cmcp_operator import bundles
from cmcp_operator.bundle_controller import BundleController, needs_reconcile
from cmcp_operator.constants import BUNDLE_FINALIZER, BUNDLE_PLURAL, ROUTE_PLURAL
from tests.paths import EXAMPLES
from tests.unit.cmcp_operator.fakes import FakeEvents, FakeKube

EXAMPLE = EXAMPLES / "minimal"
NS = "team"
T1, T2, T3 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"


class Clock:
    def __init__(self) -> None:
        self.now = T1

    def __call__(self) -> str:
        return self.now


@pytest.fixture
def files() -> dict[str, str]:
    return read_bundle_files(EXAMPLE)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def events() -> FakeEvents:
    return FakeEvents()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def controller(kube: FakeKube, events: FakeEvents, clock: Clock) -> BundleController:
    return BundleController(kube, events, clock=clock)  # type: ignore[arg-type]


def bundle_body(kube: FakeKube, spec: dict[str, Any], generation: int = 1, **meta: Any) -> dict[str, Any]:
    """Store (or update) the PolicyBundle ``b`` and return what Kopf would hand the handler."""
    old = kube.custom.get((BUNDLE_PLURAL, NS, "b"))
    body = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "PolicyBundle",
            "metadata": {"name": "b", "namespace": NS, "uid": "uid-b", "generation": generation, **meta},
            "spec": spec, "status": dict(old["status"]) if old and "status" in old else {}}
    return kube.put(BUNDLE_PLURAL, body)


async def test_new_bundle_is_published_and_status_is_exact(controller: BundleController, kube: FakeKube,
                                                           events: FakeEvents, files: dict[str, str]) -> None:
    body = bundle_body(kube, {"files": files})
    assert needs_reconcile(body)
    status = await controller.reconcile(body)

    expected_hash = load_bundle(EXAMPLE).bundle_hash
    cm_name = bundles.configmap_name("b", expected_hash)
    assert kube.calls == [("create_configmap", NS, cm_name),
                          ("patch_status", BUNDLE_PLURAL, NS, "b", status)]
    cm = kube.configmaps[(NS, cm_name)]
    assert cm["immutable"] is True
    assert cm["metadata"]["ownerReferences"] == [
        {"apiVersion": "cmcp.dev/v1alpha1", "kind": "PolicyBundle", "name": "b", "uid": "uid-b",
         "controller": True, "blockOwnerDeletion": True}]
    assert {bundles.key_to_path(k): v for k, v in cm["data"].items()} == files

    history = status.pop("history")
    assert [h["bundleHash"] for h in history] == [expected_hash] and history[0]["at"] == T1
    assert bundles.verify_history(history, status["historyHead"])
    policy_count = len(load_bundle(EXAMPLE).policies)
    assert status == {
        "observedGeneration": 1,
        "bundleHash": expected_hash, "bundleHashShort": short_hash(expected_hash),
        "catalogHash": load_bundle(EXAMPLE).catalog_hash, "enforcementMode": "enforce",
        "policyCount": policy_count, "fileCount": len(files), "configMapName": cm_name,
        "signature": {"state": "Unsigned", "signer": ""}, "validationErrors": [],
        "historyHead": history[0]["hash"], "historyLength": 1,
        "conditions": [
            {"type": "Valid", "status": "True", "reason": "Validated",
             "message": f"{policy_count} policies validate against the schema",
             "lastTransitionTime": T1, "observedGeneration": 1},
            {"type": "Ready", "status": "True", "reason": "Published",
             "message": f"bundle {expected_hash} is in ConfigMap {cm_name}",
             "lastTransitionTime": T1, "observedGeneration": 1}],
    }
    assert events.posted == [("PolicyBundle", "b", "Normal", "BundleHashChanged", f"none -> {expected_hash}")]
    assert not needs_reconcile(kube.custom[(BUNDLE_PLURAL, NS, "b")])


async def test_changed_bundle_extends_history_and_keeps_transition_times(
        controller: BundleController, kube: FakeKube, events: FakeEvents, clock: Clock,
        files: dict[str, str]) -> None:
    first = await controller.reconcile(bundle_body(kube, {"files": files}))
    edited = {**files, "policies/allow.cedar": files["policies/allow.cedar"] + "\n"}
    clock.now = T2
    kube.calls.clear()
    second = await controller.reconcile(bundle_body(kube, {"files": edited}, generation=2))

    new_hash = bundles.analyse({"files": edited}).bundle.bundle_hash  # type: ignore[union-attr]
    assert new_hash != first["bundleHash"] and second["bundleHash"] == new_hash
    assert kube.calls[0] == ("create_configmap", NS, bundles.configmap_name("b", new_hash))
    assert second["observedGeneration"] == 2 and second["historyLength"] == 2
    assert [h["bundleHash"] for h in second["history"]] == [first["bundleHash"], new_hash]
    assert second["history"][1]["prev"] == first["historyHead"]
    assert bundles.verify_history(second["history"], second["historyHead"])
    # Same condition status: the transition time stays, the observed generation moves.
    assert [(c["type"], c["status"], c["lastTransitionTime"], c["observedGeneration"])
            for c in second["conditions"]] == [("Valid", "True", T1, 2), ("Ready", "True", T1, 2)]
    assert events.reasons() == ["BundleHashChanged", "BundleHashChanged"]
    assert events.posted[1][4] == f"{first['bundleHash']} -> {new_hash}"


async def test_unchanged_bundle_posts_no_event_and_creates_nothing(
        controller: BundleController, kube: FakeKube, events: FakeEvents, files: dict[str, str]) -> None:
    await controller.reconcile(bundle_body(kube, {"files": files}))
    kube.calls.clear()
    again = await controller.reconcile(bundle_body(kube, {"files": files}))
    assert [c[0] for c in kube.calls] == ["patch_status"]
    assert again["historyLength"] == 1
    assert events.reasons() == ["BundleHashChanged"]


async def test_invalid_edit_keeps_the_last_good_bundle(controller: BundleController, kube: FakeKube,
                                                       events: FakeEvents, clock: Clock,
                                                       files: dict[str, str]) -> None:
    good = await controller.reconcile(bundle_body(kube, {"files": files}))
    clock.now = T2
    broken = {**files, "policies/broken.cedar": "permit (principal, action, resource"}
    kube.calls.clear()
    status = await controller.reconcile(bundle_body(kube, {"files": broken}, generation=2))

    assert [c[0] for c in kube.calls] == ["patch_status"]  # no ConfigMap for an invalid spec
    assert set(status) == {"observedGeneration", "validationErrors", "conditions"}
    assert any(e["file"] == "policies/broken.cedar" for e in status["validationErrors"])
    assert [(c["type"], c["status"], c["reason"], c["lastTransitionTime"], c["observedGeneration"])
            for c in status["conditions"]] == [("Valid", "False", "ValidationFailed", T2, 2),
                                               ("Ready", "False", "Invalid", T2, 2)]
    stored = kube.custom[(BUNDLE_PLURAL, NS, "b")]["status"]
    assert stored["bundleHash"] == good["bundleHash"]  # routes keep serving it
    assert stored["configMapName"] == good["configMapName"]
    assert events.posted[-1][:4] == ("PolicyBundle", "b", "Warning", "InvalidBundle")


async def test_missing_configmap_ref_is_named(controller: BundleController, kube: FakeKube) -> None:
    status = await controller.reconcile(bundle_body(kube, {"configMapRef": {"name": "nope"}}))
    valid = status["conditions"][0]
    assert (valid["type"], valid["status"], valid["reason"], valid["message"]) == (
        "Valid", "False", "ConfigMapNotFound", "ConfigMap 'nope' not found")


async def test_old_revisions_configmaps_are_collected(controller: BundleController, kube: FakeKube,
                                                      files: dict[str, str]) -> None:
    names = []
    for generation in range(1, 6):
        edited = {**files, "policies/allow.cedar": files["policies/allow.cedar"] + "\n" * generation}
        status = await controller.reconcile(bundle_body(kube, {"files": edited}, generation=generation))
        names.append(status["configMapName"])
    assert sorted(n for (_, n) in kube.configmaps) == sorted(names[-3:])
    assert [c[2] for c in kube.writes("delete_configmap")] == names[:2]


async def test_new_bundle_gets_the_in_use_finalizer(controller: BundleController, kube: FakeKube,
                                                    files: dict[str, str]) -> None:
    await controller.protect(bundle_body(kube, {"files": files}))
    assert kube.calls == [("add_finalizer", BUNDLE_PLURAL, NS, "b", [], BUNDLE_FINALIZER)]
    kube.calls.clear()
    await controller.protect(kube.custom[(BUNDLE_PLURAL, NS, "b")])
    assert kube.calls == []  # already there: no write


async def test_deleted_bundle_waits_for_its_routes(controller: BundleController, kube: FakeKube,
                                                   events: FakeEvents, files: dict[str, str]) -> None:
    kube.put(ROUTE_PLURAL, {"metadata": {"name": "r1", "namespace": NS},
                            "spec": {"policyBundleRef": {"name": "b"}}})
    kube.put(ROUTE_PLURAL, {"metadata": {"name": "other", "namespace": NS},
                            "spec": {"policyBundleRef": {"name": "x"}}})
    deleting = bundle_body(kube, {"files": files}, finalizers=[BUNDLE_FINALIZER],
                           deletionTimestamp="2026-01-01T00:00:09Z")
    assert not needs_reconcile(deleting)
    await controller.protect(deleting)
    assert kube.calls == []
    assert events.posted == [("PolicyBundle", "b", "Warning", "BundleInUse",
                              "deletion waits for McpRoute(s) r1")]

    del kube.custom[(ROUTE_PLURAL, NS, "r1")]
    await controller.route_gone(NS, "b")  # what the McpRoute delete handler calls
    assert kube.calls == [("remove_finalizer", BUNDLE_PLURAL, NS, "b", [BUNDLE_FINALIZER], BUNDLE_FINALIZER)]
    await controller.route_gone(NS, "no-such-bundle")
    assert len(kube.calls) == 1


async def test_admission_refuses_invalid_and_warns_unsigned(controller: BundleController, kube: FakeKube,
                                                            files: dict[str, str]) -> None:
    assert await controller.admission({"files": files}, NS) == (None, [])
    problem, _ = await controller.admission({"configMapRef": {"name": "nope"}}, NS)
    assert problem == "configMapRef: ConfigMap 'nope' not found"
    problem, _ = await controller.admission({"files": {**files, "policies/x.cedar": "permit ("}}, NS)
    assert problem is not None and problem.startswith("invalid PolicyBundle: ")
