"""Kopf registrations (:mod:`cmcp_operator.handlers`): what is registered with and without a
webhook, the admission rules (fail closed), and that each handler reaches the right controller.

The handlers are called as Kopf calls them, with keyword arguments; the controllers behind them
are real and talk to the repository's in-memory ``FakeKube``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes_asyncio import client

from cmcp_core.bundle import read_bundle_files
from cmcp_core.crypto import public_bytes
from cmcp_core.digest import b64url
from cmcp_operator import handlers
from cmcp_operator.bundle_controller import BundleController
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import (
    ATTESTED_CONDITION,
    BUNDLE_PLURAL,
    FINALIZER,
    GROUP,
    ROUTE_LABEL,
    ROUTE_PLURAL,
)
from cmcp_operator.route_controller import RouteController
from tests.paths import EXAMPLES
from tests.unit.cmcp_operator.fakes import FakeEvents, FakeKube

WEBHOOK = OperatorConfig(webhook_port=1)  # registration only: no server is started here


def registered(config: OperatorConfig = WEBHOOK) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    return registry


def fn(registry: kopf.OperatorRegistry, name: str) -> Callable[..., Any]:
    """The function registered under ``name`` (a handler id, or its function name)."""
    for part in ("_activities", "_changing", "_spawning", "_watching", "_webhooks"):
        for h in getattr(registry, part).get_all_handlers():
            if h.id == name or h.id.split(".")[-1].split("/")[0] == name:
                return h.fn  # type: ignore[no-any-return]
    raise LookupError(name)


def memo_with_runtime(kube: FakeKube, config: OperatorConfig = WEBHOOK) -> kopf.Memo:
    memo = kopf.Memo()
    memo.runtime = handlers.Runtime(config, kube, BundleController(kube, events=FakeEvents()),  # type: ignore[arg-type]
                                    RouteController(kube, config, None, events=FakeEvents()))  # type: ignore[arg-type]
    return memo


def body(kind: str, spec: dict[str, Any], *, deleting: bool = False) -> kopf.Body:
    meta: dict[str, Any] = {"name": "x", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return kopf.Body({"apiVersion": f"{GROUP}/v1alpha1", "kind": kind, "metadata": meta, "spec": spec})


# --- registration ------------------------------------------------------------------------

def test_no_admission_handlers_without_a_webhook_server() -> None:
    registry = registered(OperatorConfig())
    assert registry._webhooks.get_all_handlers() == []
    watching = {h.id.split(".")[-1] for h in registry._watching.get_all_handlers()}
    spawning = {h.id.split(".")[-1] for h in registry._spawning.get_all_handlers()}
    assert (watching, spawning) == ({"bundle_event", "pod_event"}, {"bundle_poll", "route_daemon"})


def test_admission_handlers_and_the_persistent_pod_gate() -> None:
    hooks = {h.id: h for h in registered()._webhooks.get_all_handlers()}
    assert set(hooks) == {"validate-policybundle", "validate-mcproute", "validate-enclave-pod"}
    pod = hooks["validate-enclave-pod"]
    assert pod.persistent and pod.operations == ["CREATE"] and pod.labels == {ROUTE_LABEL: kopf.PRESENT}
    for name, plural in (("validate-policybundle", BUNDLE_PLURAL), ("validate-mcproute", ROUTE_PLURAL)):
        assert hooks[name].operations == ["CREATE", "UPDATE"] and not hooks[name].persistent
        selector = hooks[name].selector
        assert (selector.group, selector.version, selector.any_name) == (GROUP, "v1alpha1", plural)


# --- admission ---------------------------------------------------------------------------

async def test_a_route_labelled_pod_without_the_readiness_gate_is_refused() -> None:
    admit_pod = fn(registered(), "validate-enclave-pod")
    await admit_pod(spec={"readinessGates": [{"conditionType": ATTESTED_CONDITION}]})
    for spec in ({}, {"readinessGates": None}, {"readinessGates": [{"conditionType": "other"}]}):
        with pytest.raises(kopf.AdmissionError) as err:
            await admit_pod(spec=spec)
        assert err.value.code == 403 and ATTESTED_CONDITION in str(err.value)


async def test_bundle_admission_refuses_invalid_and_passes_warnings() -> None:
    admit = fn(registered(), "validate-policybundle")
    memo = memo_with_runtime(FakeKube())
    bad = body("PolicyBundle", {"files": {"manifest.json": "{"}})
    with pytest.raises(kopf.AdmissionError) as err:
        await admit(spec=bad.spec, namespace="ns", body=bad, memo=memo, warnings=[], old=None)
    assert err.value.code == 422 and "invalid PolicyBundle" in str(err.value)
    files = read_bundle_files(EXAMPLES / "minimal")
    signer = {"name": "sec", "publicKey": b64url(public_bytes(Ed25519PrivateKey.generate().public_key()))}
    good = body("PolicyBundle", {"files": files, "trustedSigners": [signer]})
    warnings: list[str] = []
    await admit(spec=good.spec, namespace="ns", body=good, memo=memo, warnings=warnings, old=None)
    assert warnings == ["bundle is unsigned although trustedSigners are set"]


async def test_metadata_only_updates_and_deletions_are_never_refused() -> None:
    """Finalizer removal on a bundle that no longer validates must go through, or it never goes."""
    registry = registered()
    no_runtime = kopf.Memo()  # would raise TemporaryError if the handler looked any further
    bad = body("PolicyBundle", {"files": {}})
    for name in ("validate-policybundle", "validate-mcproute"):
        admit = fn(registry, name)
        await admit(spec=bad.spec, namespace="ns", body=bad, memo=no_runtime, warnings=[], old=bad)
        deleting = body("PolicyBundle", {"files": {}}, deleting=True)
        await admit(spec=deleting.spec, namespace="ns", body=deleting, memo=no_runtime, warnings=[], old=None)
        with pytest.raises(kopf.TemporaryError):  # a real change while starting: retry, never admit blind
            await admit(spec=bad.spec, namespace="ns", body=bad, memo=no_runtime, warnings=[], old=None)


async def test_route_admission_needs_the_bundle_and_allow_simulated() -> None:
    admit = fn(registered(), "validate-mcproute")
    kube = FakeKube()
    memo = memo_with_runtime(kube)
    missing = body("McpRoute", {"tee": "tdx", "policyBundleRef": {"name": "b"}})
    with pytest.raises(kopf.AdmissionError) as err:
        await admit(spec=missing.spec, namespace="ns", body=missing, memo=memo, old=None)
    assert err.value.code == 422 and "PolicyBundle 'b' not found in namespace 'ns'" in str(err.value)
    kube.put(BUNDLE_PLURAL, {"metadata": {"name": "b", "namespace": "ns"}, "spec": {}})
    await admit(spec=missing.spec, namespace="ns", body=missing, memo=memo, old=None)
    simulated = body("McpRoute", {"tee": "simulated", "policyBundleRef": {"name": "b"}})
    with pytest.raises(kopf.AdmissionError) as err:
        await admit(spec=simulated.spec, namespace="ns", body=simulated, memo=memo, old=None)
    assert "--allow-simulated" in str(err.value)


# --- events and lifecycle ------------------------------------------------------------------

async def test_handlers_before_start_up_wait_or_ignore() -> None:
    registry = registered()
    empty = kopf.Memo()
    # Watch events before start-up are dropped (the daemons reconcile everything once running) ...
    await fn(registry, "bundle_event")(body=body("PolicyBundle", {}), name="x", namespace="ns", memo=empty)
    pod = kopf.Body({"metadata": {"name": "p", "uid": "u", "labels": {ROUTE_LABEL: "r"}}})
    await fn(registry, "pod_event")(event={"type": "ADDED"}, body=pod, namespace="ns", memo=empty)
    # ... while route work is retried shortly.
    with pytest.raises(kopf.TemporaryError) as err:
        await fn(registry, "route_changed")(name="r", namespace="ns", memo=empty)
    assert err.value.delay == 1


async def test_namespaceless_objects_are_a_permanent_error() -> None:
    memo = memo_with_runtime(FakeKube())
    with pytest.raises(kopf.PermanentError):
        await fn(registered(), "route_changed")(name="r", namespace=None, memo=memo)
    with pytest.raises(kopf.PermanentError):
        await fn(registered(), "route_changed")(name="r", namespace="", memo=memo)


async def test_pod_events_wake_the_route_and_deleted_pods_are_forgotten() -> None:
    registry = registered()
    memo = memo_with_runtime(FakeKube())
    routes: RouteController = memo.runtime.routes
    routes.pods["u-1"] = object()  # type: ignore[assignment]
    pod = kopf.Body({"metadata": {"name": "p", "uid": "u-1", "labels": {ROUTE_LABEL: "r"}}})
    await fn(registry, "pod_event")(event={"type": "MODIFIED"}, body=pod, namespace="ns", memo=memo)
    assert routes.wakers[("ns", "r")].is_set() and "u-1" in routes.pods
    await fn(registry, "pod_event")(event={"type": "DELETED"}, body=pod, namespace="ns", memo=memo)
    assert "u-1" not in routes.pods


async def test_route_changes_wake_and_deletion_forgets_the_route() -> None:
    registry = registered()
    memo = memo_with_runtime(FakeKube())
    routes: RouteController = memo.runtime.routes
    await fn(registry, "route_changed")(name="r", namespace="ns", memo=memo)
    assert routes.wakers[("ns", "r")].is_set()
    routes.bundle_of[("ns", "r")] = "b"
    await fn(registry, "route_deleted")(name="r", namespace="ns", spec={"policyBundleRef": {"name": "b"}},
                                        memo=memo)
    assert ("ns", "r") not in routes.wakers and ("ns", "r") not in routes.bundle_of


async def test_startup_configures_kopf_and_builds_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the cluster connection is replaced (an unconfigured client that never connects)."""
    async def no_cluster() -> client.ApiClient:
        return client.ApiClient()

    monkeypatch.setattr(handlers, "load_client", no_cluster)
    config = OperatorConfig(peering="cmcp", all_namespaces=True)
    registry = registered(config)
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    await fn(registry, "startup")(settings=settings, memo=memo)
    try:
        assert settings.persistence.finalizer == FINALIZER
        assert settings.peering.name == "cmcp" and settings.peering.mandatory and settings.peering.clusterwide
        rt = handlers.runtime(memo)
        assert rt.config is config and rt.routes.config is config and rt.routes.verifier is not None
    finally:
        await fn(registry, "cleanup")(memo=memo)
    standalone = kopf.OperatorSettings()
    memo2 = kopf.Memo()
    await fn(registered(OperatorConfig()), "startup")(settings=standalone, memo=memo2)
    await fn(registered(OperatorConfig()), "cleanup")(memo=memo2)
    assert standalone.peering.standalone
