"""Thin async Kubernetes access: raw dicts in camelCase (what we render), server-side apply
for owned objects (idempotent, no read-modify-write races) and merge patches for status."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from cmcp_core.kube_config import explicit_kubeconfig, in_cluster_server, load_configuration
from cmcp_operator.constants import (
    ATTESTED_CONDITION,
    BUNDLE_PLURAL,
    FIELD_MANAGER,
    GROUP,
    ROUTE_LABEL,
    ROUTE_PLURAL,
    VERSION,
)

MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"
STRATEGIC = "application/strategic-merge-patch+json"


async def load_client() -> client.ApiClient:
    """$KUBECONFIG if set, else the pod's ServiceAccount, else ~/.kube/config (cmcp_core.kube_config)."""
    return client.ApiClient(configuration=await load_configuration())


def connection_info(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's credentials in the same order as :func:`load_client` (cmcp_core.kube_config).

    Kopf's own defaults differ twice: it tries the ServiceAccount first even when ``$KUBECONFIG``
    names another cluster, and it sends the ServiceAccount's token to
    ``https://kubernetes.default.svc``, a name only cluster DNS resolves (the operator's watches
    failed where none runs). The address is the one the kubelet gives every pod instead.
    """
    if explicit_kubeconfig():
        return kopf.login_with_kubeconfig(**kwargs)
    info = kopf.login_with_service_account(**kwargs)
    if info is None:
        return kopf.login_with_kubeconfig(**kwargs)
    server = in_cluster_server()
    return dataclasses.replace(info, server=server) if server else info


async def _json(coro: Any) -> Any:
    """Await a raw (``_preload_content=False``) call; raise :class:`ApiException` on >= 400,
    which raw calls do not do by themselves."""
    resp = await coro
    try:
        body = await resp.read()
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=f"{resp.reason}: {body[:500]!r}")
        return json.loads(body) if body else {}
    finally:
        resp.release()


class Kube:
    """The handful of calls the operator makes, so RBAC in :mod:`cmcp_operator.rbac` is easy to audit."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    async def close(self) -> None:
        await self.api.close()

    # --- cMCP resources -------------------------------------------------------------
    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(await _json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _preload_content=False)))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def get_bundle(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(BUNDLE_PLURAL, namespace, name)

    async def get_route(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(ROUTE_PLURAL, namespace, name)

    async def list_routes(self, namespace: str) -> list[dict[str, Any]]:
        doc = await _json(self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, ROUTE_PLURAL, _preload_content=False))
        return list(doc.get("items", []))

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge patch on the status subresource: no resourceVersion, so no conflicts to retry;
        the content is computed from observed state, so the last writer is right."""
        await _json(self.custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
            GROUP, VERSION, namespace, plural, name, {"status": status},
            _content_type=MERGE, _preload_content=False))

    async def patch_route_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.patch_status(ROUTE_PLURAL, namespace, name, status)

    async def add_finalizer(self, plural: str, namespace: str, name: str, current: list[str],
                            finalizer: str) -> None:
        """JSON patch guarded by a ``test`` of the list we saw: a concurrent change fails (422)
        instead of being overwritten, and the next event retries with fresh data."""
        ops: list[dict[str, Any]] = (
            [{"op": "test", "path": "/metadata/finalizers", "value": current},
             {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}] if current else
            [{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}])
        await self._patch_json(plural, namespace, name, ops)

    async def remove_finalizer(self, plural: str, namespace: str, name: str, current: list[str],
                               finalizer: str) -> None:
        index = current.index(finalizer)
        await self._patch_json(plural, namespace, name, [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"}])

    async def _patch_json(self, plural: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        try:
            await _json(self.custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                GROUP, VERSION, namespace, plural, name, ops,
                _content_type="application/json-patch+json", _preload_content=False))
        except ApiException as exc:
            if exc.status not in (404, 409, 422):  # gone, or changed under us: next event retries
                raise

    # --- owned objects ---------------------------------------------------------------
    async def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply with our field manager: create or converge, never clobber others.

        Only the kinds RBAC lets us patch (Deployments, Services); bundle ConfigMaps are immutable
        and created once (:meth:`create_configmap_if_absent`)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True,
                                  "_content_type": APPLY, "_preload_content": False}
        if kind == "Deployment":
            await _json(self.apps.patch_namespaced_deployment(name, ns, obj, **kwargs))
        elif kind == "Service":
            await _json(self.core.patch_namespaced_service(name, ns, obj, **kwargs))
        else:
            raise ValueError(f"cannot apply {kind}")

    async def create_configmap_if_absent(self, obj: dict[str, Any]) -> bool:
        """Immutable ConfigMaps cannot be re-applied with new data; create once, keep."""
        try:
            await _json(self.core.create_namespaced_config_map(
                obj["metadata"]["namespace"], obj, _preload_content=False))  # type: ignore[arg-type]
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    async def get_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            doc = await _json(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(doc.get("data") or {})

    async def list_bundle_configmaps(self, namespace: str, bundle: str) -> list[dict[str, Any]]:
        doc = await _json(self.core.list_namespaced_config_map(
            namespace, label_selector=f"cmcp.dev/policy-bundle={bundle}", _preload_content=False))
        return list(doc.get("items", []))

    async def delete_configmap(self, namespace: str, name: str, uid: str) -> None:
        """Delete exactly the object we listed: RBAC cannot limit delete to our ConfigMaps (no
        label selection), so the UID precondition makes a recreated namesake safe (409)."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            await _json(self.core.delete_namespaced_config_map(name, namespace, body=options,
                                                               _preload_content=False))
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or a namesake that is not ours
                raise

    # --- pods --------------------------------------------------------------------------
    async def list_route_pods(self, namespace: str, route: str) -> list[dict[str, Any]]:
        doc = await _json(self.core.list_namespaced_pod(
            namespace, label_selector=f"{ROUTE_LABEL}={route}", _preload_content=False))
        return list(doc.get("items", []))

    async def set_attested_condition(self, namespace: str, pod: str, status: bool, reason: str,
                                     message: str, now: str) -> None:
        """Strategic merge on pods/status merges conditions by type: we touch only ours."""
        cond = {"type": ATTESTED_CONDITION, "status": "True" if status else "False",
                "reason": reason, "message": message[:1024], "lastTransitionTime": now,
                "lastProbeTime": now}
        try:
            await _json(self.core.patch_namespaced_pod_status(  # type: ignore[call-arg]
                pod, namespace, {"status": {"conditions": [cond]}},
                _content_type=STRATEGIC, _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:  # gone already: nothing to gate
                raise
