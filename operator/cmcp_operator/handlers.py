"""Kopf registrations. Handlers stay thin: logic lives in bundles / routes / workloads.

All handlers are idempotent (re-running one converges to the same state) and use the
operator-wide :class:`Runtime` from Kopf's memo.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from cmcp_operator import bundles, metrics, webhook
from cmcp_operator.appraise import VerifierFn
from cmcp_operator.conditions import Condition, merge_conditions, now_rfc3339, transitions
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import (
    ATTESTED_CONDITION,
    BUNDLE_FINALIZER,
    BUNDLE_PLURAL,
    COND_READY,
    COND_VALID,
    FINALIZER,
    GROUP,
    ROUTE_LABEL,
    ROUTE_PLURAL,
    VERSION,
)
from cmcp_operator.kube import Kube, load_client
from cmcp_operator.routes import RouteController
from cmcp_operator.verifier import load_verifier

log = logging.getLogger("cmcp_operator")
KEEP_CONFIGMAPS = 3  # bundle revisions whose ConfigMap survives (old pods may restart)


@dataclass
class Runtime:
    config: OperatorConfig
    kube: Kube
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
        if config.webhook_port is not None:
            settings.admission.server = webhook.build_server(config)
            settings.admission.managed = f"cmcp-operator.{GROUP}"
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
        memo.runtime = Runtime(config, kube, RouteController(kube, config, chosen))

    @on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In-cluster service account first, then KUBECONFIG (explicit registries get no default)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

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
        await protect_bundle(rt, body)
        if _bundle_needs_reconcile(body):
            await reconcile_bundle(rt, body)
        rt.routes.wake_bundle_users(_ns(namespace), name)

    @kopf.timer(GROUP, VERSION, BUNDLE_PLURAL, registry=registry, interval=config.reattest_interval)
    async def bundle_poll(body: kopf.Body, memo: Any, **_: Any) -> None:
        """Retries a failed reconcile, and follows a referenced ConfigMap, which can change
        without the PolicyBundle changing."""
        if body.get("spec", {}).get("configMapRef") or _bundle_needs_reconcile(body):
            await reconcile_bundle(runtime(memo), body)

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
        ref = str(spec.get("policyBundleRef", {}).get("name", ""))
        bundle = await rt.kube.get_bundle(_ns(namespace), ref)
        if bundle is not None:
            await protect_bundle(rt, kopf.Body(bundle))  # type: ignore[arg-type]

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
        data = None
        ref = spec.get("configMapRef")
        if ref:
            data = await runtime(memo).kube.get_configmap_data(_ns(namespace), str(ref["name"]))
            if data is None:
                raise kopf.AdmissionError(f"configMapRef: ConfigMap {ref['name']!r} not found", code=422)
        analysis = bundles.analyse(dict(spec), data)
        if not analysis.valid:
            raise kopf.AdmissionError(f"invalid PolicyBundle: {analysis.summary(8)}", code=422)
        if spec.get("trustedSigners") and analysis.signature_state == "Unsigned":
            warnings.append("bundle is unsigned although trustedSigners are set")

    @on.validate(GROUP, VERSION, ROUTE_PLURAL, id="validate-mcproute",
                 operations=["CREATE", "UPDATE"], registry=registry)
    async def admit_route(spec: kopf.Spec, namespace: str | None, body: kopf.Body, memo: Any,
                          **kwargs: Any) -> None:
        if _unchanged_or_deleting(kwargs.get("old"), body):
            return
        ref = str(spec.get("policyBundleRef", {}).get("name", ""))
        exists = await runtime(memo).kube.get_bundle(_ns(namespace), ref) is not None
        problem = route_admission_problem(spec, namespace=_ns(namespace), bundle_exists=exists,
                                          allow_simulated=config.allow_simulated)
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


def route_admission_problem(spec: Mapping[str, Any], *, namespace: str, bundle_exists: bool,
                            allow_simulated: bool) -> str | None:
    """Why an McpRoute must not be admitted, or None."""
    if spec.get("tee") == "simulated" and not allow_simulated:
        return "tee: simulated is refused: the operator runs without --allow-simulated"
    if not bundle_exists:
        ref = spec.get("policyBundleRef", {}).get("name", "")
        return f"policyBundleRef: PolicyBundle {ref!r} not found in namespace {namespace!r}"
    return None


def _ns(namespace: str | None) -> str:
    if not namespace:
        raise kopf.PermanentError("cMCP resources are namespaced")
    return namespace


def _unchanged_or_deleting(old: kopf.Body | None, new: kopf.Body) -> bool:
    """Metadata-only updates (finalizers, labels) and deletions never fail admission."""
    if new.get("metadata", {}).get("deletionTimestamp"):
        return True
    return old is not None and old.get("spec") == new.get("spec")


async def protect_bundle(rt: Runtime, body: kopf.Body) -> None:
    """pvc-protection for bundles: our finalizer stays while an McpRoute still uses it."""
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    finalizers = list(meta.get("finalizers") or [])
    if not meta.get("deletionTimestamp"):
        if BUNDLE_FINALIZER not in finalizers:
            await rt.kube.add_finalizer(BUNDLE_PLURAL, namespace, name, finalizers, BUNDLE_FINALIZER)
        return
    if BUNDLE_FINALIZER not in finalizers:
        return
    users = sorted(r["metadata"]["name"] for r in await rt.kube.list_routes(namespace)
                   if r.get("spec", {}).get("policyBundleRef", {}).get("name") == name
                   and not r["metadata"].get("deletionTimestamp"))
    if users:
        kopf.event(body, type="Warning", reason="BundleInUse",
                   message=f"deletion waits for McpRoute(s) {', '.join(users)}")
        return
    await rt.kube.remove_finalizer(BUNDLE_PLURAL, namespace, name, finalizers, BUNDLE_FINALIZER)


def _bundle_needs_reconcile(body: kopf.Body) -> bool:
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return False
    return bool((body.get("status") or {}).get("observedGeneration") != meta.get("generation"))


async def reconcile_bundle(rt: Runtime, body: kopf.Body) -> None:
    meta, spec = body["metadata"], dict(body.get("spec") or {})
    status: dict[str, Any] = dict(body.get("status") or {})
    namespace, name, generation = meta["namespace"], meta["name"], int(meta.get("generation", 0))
    data = None
    problem: Condition | None = None
    ref = spec.get("configMapRef")
    if ref:
        data = await rt.kube.get_configmap_data(namespace, str(ref["name"]))
        if data is None:
            problem = Condition(COND_VALID, False, "ConfigMapNotFound",
                                f"ConfigMap {ref['name']!r} not found")
    analysis = bundles.analyse(spec, data)
    new: dict[str, Any] = {"observedGeneration": generation}
    if problem is None and analysis.valid and analysis.bundle is not None:
        bundle = analysis.bundle
        cm = bundles.configmap_body(name, namespace, analysis, _owner(body))
        if await rt.kube.create_configmap_if_absent(cm):
            log.info("created bundle ConfigMap %s/%s", namespace, cm["metadata"]["name"])
        history, head, length = bundles.extend_history(status, bundle.bundle_hash, now_rfc3339(),
                                                       int(spec.get("historyLimit", 10)))
        new.update(
            bundleHash=bundle.bundle_hash, bundleHashShort=bundles.short_hash(bundle.bundle_hash),
            catalogHash=bundle.catalog_hash, enforcementMode=bundle.enforcement_mode,
            policyCount=len(bundle.policies), fileCount=len(analysis.files),
            configMapName=cm["metadata"]["name"],
            signature={"state": analysis.signature_state, "signer": analysis.signer},
            validationErrors=[], history=history, historyHead=head, historyLength=length)
        conds = [Condition(COND_VALID, True, "Validated",
                           f"{len(bundle.policies)} policies validate against the schema"),
                 Condition(COND_READY, True, "Published", f"bundle {bundle.bundle_hash} is in ConfigMap "
                                                          f"{cm['metadata']['name']}")]
        if status.get("bundleHash") != bundle.bundle_hash:
            kopf.event(body, type="Normal", reason="BundleHashChanged",
                      message=f"{status.get('bundleHash', 'none')} -> {bundle.bundle_hash}")
        await _collect_configmaps(rt, namespace, name, {h["bundleHash"] for h in history[-KEEP_CONFIGMAPS:]})
    else:
        # Keep the last good hash and ConfigMap: routes keep serving it until a valid edit.
        issues = [i.to_status() for i in analysis.issues[:50]]
        message = problem.message if problem else analysis.summary()
        new.update(validationErrors=issues)
        conds = [problem or Condition(COND_VALID, False, "ValidationFailed", message),
                 Condition(COND_READY, False, "Invalid", "the current spec cannot serve; "
                                                         "routes keep the last valid bundle")]
        kopf.warn(body, reason="InvalidBundle", message=message[:1000])
    new["conditions"] = merge_conditions(status.get("conditions"), conds, generation=generation)
    for cond in transitions(status.get("conditions"), new["conditions"]):
        if cond["type"] == COND_VALID:
            log.info("PolicyBundle %s/%s Valid=%s", namespace, name, cond["status"])
    try:
        await rt.kube.patch_status(BUNDLE_PLURAL, namespace, name, new)
    except ApiException:
        metrics.RECONCILES.labels("PolicyBundle", "error").inc()
        raise
    metrics.RECONCILES.labels("PolicyBundle", "ok").inc()


async def _collect_configmaps(rt: Runtime, namespace: str, name: str, keep: set[str]) -> None:
    """Delete bundle ConfigMaps of revisions that fell out of the last few history entries."""
    try:
        for cm in await rt.kube.list_bundle_configmaps(namespace, name):
            if cm["metadata"].get("annotations", {}).get("cmcp.dev/bundle-hash") not in keep:
                await rt.kube.delete_configmap(namespace, cm["metadata"]["name"])
    except ApiException as exc:  # garbage collection is best effort
        log.warning("could not collect old bundle ConfigMaps: %s", exc.reason)


def _owner(body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PolicyBundle", "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
