"""An in-memory stand-in for :class:`cmcp_operator.kube.Kube` and the Event recorder.

Same method names and arguments as the facade; objects live in dicts, and every write is
appended to ``calls`` so a test can assert exactly what a reconcile sent to the API server.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from cmcp_operator.constants import ATTESTED_CONDITION, BUNDLE_LABEL, BUNDLE_PLURAL, ROUTE_LABEL, ROUTE_PLURAL


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, what ``Kube.patch_status`` sends."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class FakeKube:
    custom: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # plural, ns, name
    configmaps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    applied: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # kind, ns, name
    calls: list[tuple[Any, ...]] = field(default_factory=list)  # writes only, in order

    # --- test set-up ----------------------------------------------------------------------
    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self.custom[(plural, meta["namespace"], meta["name"])] = obj
        return obj

    def writes(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]

    # --- the facade -----------------------------------------------------------------------
    async def close(self) -> None:
        pass

    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.custom.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def get_bundle(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(BUNDLE_PLURAL, namespace, name)

    async def get_route(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(ROUTE_PLURAL, namespace, name)

    async def list_routes(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (p, ns, _), o in self.custom.items()
                if p == ROUTE_PLURAL and ns == namespace]

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("patch_status", plural, namespace, name, copy.deepcopy(status)))
        obj = self.custom[(plural, namespace, name)]
        obj["status"] = merge_patch(obj.get("status") or {}, status)

    async def patch_route_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.patch_status(ROUTE_PLURAL, namespace, name, status)

    async def add_finalizer(self, plural: str, namespace: str, name: str, current: list[str],
                            finalizer: str) -> None:
        self.calls.append(("add_finalizer", plural, namespace, name, list(current), finalizer))
        meta = self.custom[(plural, namespace, name)]["metadata"]
        meta["finalizers"] = [*current, finalizer]

    async def remove_finalizer(self, plural: str, namespace: str, name: str, current: list[str],
                               finalizer: str) -> None:
        self.calls.append(("remove_finalizer", plural, namespace, name, list(current), finalizer))
        meta = self.custom[(plural, namespace, name)]["metadata"]
        meta["finalizers"] = [f for f in current if f != finalizer]

    async def apply(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.calls.append(("apply", obj["kind"], meta["namespace"], meta["name"]))
        self.applied[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    async def create_configmap_if_absent(self, obj: dict[str, Any]) -> bool:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.configmaps:
            return False
        self.calls.append(("create_configmap", *key))
        self.configmaps[key] = copy.deepcopy(obj)
        self.configmaps[key]["metadata"].setdefault("uid", f"uid-{key[0]}-{key[1]}")  # the apiserver's
        return True

    async def get_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        cm = self.configmaps.get((namespace, name))
        return dict(cm.get("data") or {}) if cm is not None else None

    async def list_bundle_configmaps(self, namespace: str, bundle: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(cm) for (ns, _), cm in sorted(self.configmaps.items())
                if ns == namespace and cm["metadata"].get("labels", {}).get(BUNDLE_LABEL) == bundle]

    async def delete_configmap(self, namespace: str, name: str, uid: str) -> None:
        self.calls.append(("delete_configmap", namespace, name))
        if (self.configmaps.get((namespace, name)) or {}).get("metadata", {}).get("uid") == uid:
            self.configmaps.pop((namespace, name), None)  # the apiserver's UID precondition

    async def list_route_pods(self, namespace: str, route: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for (ns, _), p in sorted(self.pods.items())
                if ns == namespace and p["metadata"].get("labels", {}).get(ROUTE_LABEL) == route]

    async def set_attested_condition(self, namespace: str, pod: str, status: bool, reason: str,
                                     message: str, now: str) -> None:
        self.calls.append(("set_attested_condition", namespace, pod, status, reason))
        conds = self.pods[(namespace, pod)].setdefault("status", {}).setdefault("conditions", [])
        conds[:] = [c for c in conds if c.get("type") != ATTESTED_CONDITION]  # strategic merge by type
        conds.append({"type": ATTESTED_CONDITION, "status": "True" if status else "False", "reason": reason,
                      "message": message[:1024], "lastTransitionTime": now, "lastProbeTime": now})


@dataclass
class FakeEvents:
    """Records (kind, name, type, reason, message) for every Event a controller posts."""

    posted: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def event(self, obj: Any, *, type: str, reason: str, message: str) -> None:
        self.posted.append((str(obj.get("kind", "")), str(obj["metadata"]["name"]), type, reason, message))

    def warn(self, obj: Any, *, reason: str, message: str) -> None:
        self.event(obj, type="Warning", reason=reason, message=message)

    def reasons(self) -> list[str]:
        return [p[3] for p in self.posted]
