"""Kopf registrations, and nothing else: each handler unpacks Kopf's arguments and calls
:mod:`cmcp_operator.bundle_controller` or :mod:`cmcp_operator.route_controller`, where the
reconcile logic lives (and is unit-tested without Kopf).

All handlers are idempotent (re-running one converges to the same state) and use the
operator-wide :class:`Runtime` from Kopf's memo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from cmcp_operator import metrics, webhook
from cmcp_operator.bundle_controller import BundleController, needs_reconcile
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import (
    ATTESTED_CONDITION,
    BUNDLE_PLURAL,
    FINALIZER,
    GROUP,
    ROUTE_LABEL,
    ROUTE_PLURAL,
    VERSION,
)
from cmcp_operator.kube import Kube, connection_info, load_client
from cmcp_operator.pod_appraisal import VerifierFn
from cmcp_operator.route_controller import RouteController
from cmcp_operator.verifier import load_verifier


@dataclass
class Runtime:
    config: OperatorConfig
    kube: Kube
    bundles: BundleController
    routes: RouteController


def runtime(memo: Any) -> Runtime:
    rt = getattr(memo, "runtime", None)
    if rt is None:
        raise kopf.TemporaryError("operator is still starting", delay=1)
    return rt  # type: ignore[no-any-return]


def register(registry: kopf.OperatorRegistry, config: OperatorConfig,
             verifier: VerifierFn | None = None) -> None:
    """Register every handler on ``registry`` (explicit, so tests can run several operators)."""
    on = kopf.on

    @on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # Events from kopf's own logs: warnings only
        settings.watching.server_timeout = 270
        settings.batching.error_delays = [1, 2, 5, 10, 30]
        # No CRD or namespace list/watch (cluster-wide reads RBAC cannot narrow): resources come
        # from the discovery API at start (the chart installs the CRDs first) and --namespace
        # names exact namespaces (main refuses globs).
        settings.scanning.disabled = True
        if config.webhook_port is not None:
            settings.admission.server = webhook.build_server(config)
            settings.admission.managed = f"cmcp-operator.{GROUP}"
            webhook.manage_existing_configuration()  # the chart's object: get/patch, no create
        if config.peering:
            settings.peering.name = config.peering
            settings.peering.mandatory = True
            settings.peering.clusterwide = config.all_namespaces
        else:
            settings.peering.standalone = True
        if config.metrics_port is not None:
            metrics.serve(config.metrics_port)
        kube = Kube(await load_client())
        chosen = verifier if verifier is not None else load_verifier()
        memo.runtime = Runtime(config, kube, BundleController(kube), RouteController(kube, config, chosen))

    @on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same order as every other client (cmcp_core.kube_config): $KUBECONFIG if set, else
        the pod's ServiceAccount, else ~/.kube/config (explicit registries get no default)."""
        return connection_info(**kwargs)

    @on.cleanup(registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        rt = getattr(memo, "runtime", None)
        if rt is not None:
            await rt.kube.close()

    # --- PolicyBundle -----------------------------------------------------------------
    # Level-triggered on purpose: Kopf's create/update handlers would keep a copy of the spec
    # (the whole bundle) in an annotation, halving the bundle size an object can carry.
    @on.event(GROUP, VERSION, BUNDLE_PLURAL, registry=registry)
    async def bundle_event(body: kopf.Body, name: str, namespace: str | None, memo: Any,
                           **_: Any) -> None:
        """Reconcile a spec the status has not caught up with; keep the in-use finalizer;
        wake the routes using the bundle."""
        rt = getattr(memo, "runtime", None)
        if rt is None:
            return
        await rt.bundles.protect(body)
        if needs_reconcile(body):
            await rt.bundles.reconcile(body)
        rt.routes.wake_bundle_users(_ns(namespace), name)

    @kopf.timer(GROUP, VERSION, BUNDLE_PLURAL, registry=registry, interval=config.reattest_interval)
    async def bundle_poll(body: kopf.Body, memo: Any, **_: Any) -> None:
        """Retries a failed reconcile, and follows a referenced ConfigMap, which can change
        without the PolicyBundle changing."""
        if body.get("spec", {}).get("configMapRef") or needs_reconcile(body):
            await runtime(memo).bundles.reconcile(body)

    # --- McpRoute ---------------------------------------------------------------------
    @kopf.daemon(GROUP, VERSION, ROUTE_PLURAL, registry=registry, cancellation_timeout=5.0)
    async def route_daemon(name: str, namespace: str | None, stopped: kopf.DaemonStopped, memo: Any,
                           **_: Any) -> None:
        await runtime(memo).routes.run(_ns(namespace), name, stopped)

    @on.resume(GROUP, VERSION, ROUTE_PLURAL, registry=registry)
    @on.create(GROUP, VERSION, ROUTE_PLURAL, registry=registry)
    @on.update(GROUP, VERSION, ROUTE_PLURAL, field="spec", registry=registry)
    async def route_changed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
        runtime(memo).routes.wake(_ns(namespace), name)

    @on.delete(GROUP, VERSION, ROUTE_PLURAL, registry=registry)
    async def route_deleted(name: str, namespace: str | None, spec: kopf.Spec, memo: Any,
                            **_: Any) -> None:
        """Owned Deployment/Service go by ownerReference GC; we drop cache and metric series,
        and release the bundle if it was waiting for its last route to go."""
        rt = runtime(memo)
        rt.routes.forget(_ns(namespace), name)
        await rt.bundles.route_gone(_ns(namespace), str(spec.get("policyBundleRef", {}).get("name", "")))

    # --- enclave pods (and anything else wearing the route label) -----------------------
    @on.event("", "v1", "pods", labels={ROUTE_LABEL: kopf.PRESENT}, registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: Any,
                        **_: Any) -> None:
        rt = getattr(memo, "runtime", None)
        if rt is None:
            return
        if event.get("type") == "DELETED":
            rt.routes.forget_pod(str(body["metadata"].get("uid")))
        rt.routes.wake(_ns(namespace), str(body["metadata"]["labels"][ROUTE_LABEL]))

    if config.webhook_port is not None:
        _register_admission(registry, config)


def _register_admission(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Validating webhooks; only with a webhook server (Kopf refuses handlers without one)."""
    on = kopf.on

    @on.validate(GROUP, VERSION, BUNDLE_PLURAL, id="validate-policybundle",
                 operations=["CREATE", "UPDATE"], registry=registry)
    async def admit_bundle(spec: kopf.Spec, namespace: str | None, body: kopf.Body, memo: Any,
                           warnings: list[str], **kwargs: Any) -> None:
        if _unchanged_or_deleting(kwargs.get("old"), body):
            return
        problem, found = await runtime(memo).bundles.admission(spec, _ns(namespace))
        if problem:
            raise kopf.AdmissionError(problem, code=422)
        warnings.extend(found)

    @on.validate(GROUP, VERSION, ROUTE_PLURAL, id="validate-mcproute",
                 operations=["CREATE", "UPDATE"], registry=registry)
    async def admit_route(spec: kopf.Spec, namespace: str | None, body: kopf.Body, memo: Any,
                          **kwargs: Any) -> None:
        if _unchanged_or_deleting(kwargs.get("old"), body):
            return
        problem = await runtime(memo).routes.admission(spec, _ns(namespace))
        if problem:
            raise kopf.AdmissionError(problem, code=422)

    @on.validate("", "v1", "pods", id="validate-enclave-pod", operations=["CREATE"],
                 labels={ROUTE_LABEL: kopf.PRESENT}, persistent=True, registry=registry)
    async def admit_pod(spec: kopf.Spec, **_: Any) -> None:
        """A pod wearing a route label must carry our readiness gate, or it could join the
        route's endpoints without ever being attested. Persistent: it stays registered while
        the operator is down (fail closed), unlike the bundle/route webhooks."""
        gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
        if ATTESTED_CONDITION not in gates:
            raise kopf.AdmissionError(
                f"pods labelled {ROUTE_LABEL} must list readinessGate {ATTESTED_CONDITION}", code=403)


def _ns(namespace: str | None) -> str:
    if not namespace:
        raise kopf.PermanentError("cMCP resources are namespaced")
    return namespace


def _unchanged_or_deleting(old: kopf.Body | None, new: kopf.Body) -> bool:
    """Metadata-only updates (finalizers, labels) and deletions never fail admission."""
    if new.get("metadata", {}).get("deletionTimestamp"):
        return True
    return old is not None and old.get("spec") == new.get("spec")
