"""The PolicyBundle reconcile: validate the spec, publish the bundle in an immutable
ConfigMap, record the revision history, and write status with conditions.

Plain async code on the :class:`~cmcp_operator.kube.Kube` facade, so the reconcile runs in
unit tests against a fake of it; the Kopf registrations in :mod:`cmcp_operator.handlers`
only call in here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from cmcp_core.route_status import short_hash
from cmcp_operator import bundles, metrics
from cmcp_operator.conditions import Condition, merge_conditions, now_rfc3339, transitions
from cmcp_operator.constants import BUNDLE_FINALIZER, BUNDLE_PLURAL, COND_READY, COND_VALID, GROUP, VERSION
from cmcp_operator.events import EventRecorder, KopfEvents
from cmcp_operator.kube import Kube

log = logging.getLogger("cmcp_operator")
KEEP_CONFIGMAPS = 3  # bundle revisions whose ConfigMap survives (old pods may restart)


def needs_reconcile(body: Mapping[str, Any]) -> bool:
    """The status has not caught up with the spec (and the bundle is not being deleted)."""
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return False
    return bool((body.get("status") or {}).get("observedGeneration") != meta.get("generation"))


class BundleController:
    def __init__(self, kube: Kube, events: EventRecorder | None = None,
                 clock: Callable[[], str] = now_rfc3339) -> None:
        self.kube = kube
        self.events: EventRecorder = events if events is not None else KopfEvents()
        self.clock = clock

    async def admission(self, spec: Mapping[str, Any], namespace: str) -> tuple[str | None, list[str]]:
        """Why the webhook must refuse this spec (or None), and warnings to return with it."""
        data = None
        ref = spec.get("configMapRef")
        if ref:
            data = await self.kube.get_configmap_data(namespace, str(ref["name"]))
            if data is None:
                return f"configMapRef: ConfigMap {ref['name']!r} not found", []
        analysis = bundles.analyse(dict(spec), data)
        if not analysis.valid:
            return f"invalid PolicyBundle: {analysis.summary(8)}", []
        if spec.get("trustedSigners") and analysis.signature_state == "Unsigned":
            return None, ["bundle is unsigned although trustedSigners are set"]
        return None, []

    async def protect(self, body: Mapping[str, Any]) -> None:
        """pvc-protection for bundles: our finalizer stays while an McpRoute still uses it."""
        meta = body["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        finalizers = list(meta.get("finalizers") or [])
        if not meta.get("deletionTimestamp"):
            if BUNDLE_FINALIZER not in finalizers:
                await self.kube.add_finalizer(BUNDLE_PLURAL, namespace, name, finalizers, BUNDLE_FINALIZER)
            return
        if BUNDLE_FINALIZER not in finalizers:
            return
        users = sorted(r["metadata"]["name"] for r in await self.kube.list_routes(namespace)
                       if r.get("spec", {}).get("policyBundleRef", {}).get("name") == name
                       and not r["metadata"].get("deletionTimestamp"))
        if users:
            self.events.event(body, type="Warning", reason="BundleInUse",
                              message=f"deletion waits for McpRoute(s) {', '.join(users)}")
            return
        await self.kube.remove_finalizer(BUNDLE_PLURAL, namespace, name, finalizers, BUNDLE_FINALIZER)

    async def route_gone(self, namespace: str, bundle_name: str) -> None:
        """A route using ``bundle_name`` was deleted: release the bundle if it waited for that."""
        bundle = await self.kube.get_bundle(namespace, bundle_name)
        if bundle is not None:
            await self.protect(bundle)

    async def reconcile(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Compute and patch the status for the current spec; returns the patched status."""
        meta, spec = body["metadata"], dict(body.get("spec") or {})
        status: dict[str, Any] = dict(body.get("status") or {})
        namespace, name, generation = meta["namespace"], meta["name"], int(meta.get("generation", 0))
        data = None
        problem: Condition | None = None
        ref = spec.get("configMapRef")
        if ref:
            data = await self.kube.get_configmap_data(namespace, str(ref["name"]))
            if data is None:
                problem = Condition(COND_VALID, False, "ConfigMapNotFound",
                                    f"ConfigMap {ref['name']!r} not found")
        analysis = bundles.analyse(spec, data)
        new: dict[str, Any] = {"observedGeneration": generation}
        if problem is None and analysis.valid and analysis.bundle is not None:
            bundle = analysis.bundle
            cm = bundles.configmap_body(name, namespace, analysis, owner_reference(body))
            if await self.kube.create_configmap_if_absent(cm):
                log.info("created bundle ConfigMap %s/%s", namespace, cm["metadata"]["name"])
            history, head, length = bundles.extend_history(status, bundle.bundle_hash, self.clock(),
                                                           int(spec.get("historyLimit", 10)))
            new.update(
                bundleHash=bundle.bundle_hash, bundleHashShort=short_hash(bundle.bundle_hash),
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
                self.events.event(body, type="Normal", reason="BundleHashChanged",
                                  message=f"{status.get('bundleHash', 'none')} -> {bundle.bundle_hash}")
            await self._collect_configmaps(namespace, name,
                                           {h["bundleHash"] for h in history[-KEEP_CONFIGMAPS:]})
        else:
            # Keep the last good hash and ConfigMap: routes keep serving it until a valid edit.
            issues = [i.to_status() for i in analysis.issues[:50]]
            message = problem.message if problem else analysis.summary()
            new.update(validationErrors=issues)
            conds = [problem or Condition(COND_VALID, False, "ValidationFailed", message),
                     Condition(COND_READY, False, "Invalid", "the current spec cannot serve; "
                                                             "routes keep the last valid bundle")]
            self.events.warn(body, reason="InvalidBundle", message=message[:1000])
        new["conditions"] = merge_conditions(status.get("conditions"), conds, generation=generation,
                                             now=self.clock())
        for cond in transitions(status.get("conditions"), new["conditions"]):
            if cond["type"] == COND_VALID:
                log.info("PolicyBundle %s/%s Valid=%s", namespace, name, cond["status"])
        try:
            await self.kube.patch_status(BUNDLE_PLURAL, namespace, name, new)
        except ApiException:
            metrics.RECONCILES.labels("PolicyBundle", "error").inc()
            raise
        metrics.RECONCILES.labels("PolicyBundle", "ok").inc()
        return new

    async def _collect_configmaps(self, namespace: str, name: str, keep: set[str]) -> None:
        """Delete bundle ConfigMaps of revisions that fell out of the last few history entries."""
        try:
            for cm in await self.kube.list_bundle_configmaps(namespace, name):
                if cm["metadata"].get("annotations", {}).get("cmcp.dev/bundle-hash") not in keep:
                    await self.kube.delete_configmap(namespace, cm["metadata"]["name"], cm["metadata"]["uid"])
        except ApiException as exc:  # garbage collection is best effort
            log.warning("could not collect old bundle ConfigMaps: %s", exc.reason)


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PolicyBundle", "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
