"""The cluster target: a deployed gateway route plus what the McpRoute's status tells us.

The status names the expected ``bundleHash`` and, per enclave pod, its address, attestation
state and key thumbprint. The suite uses the address (when it is reachable from where the suite
runs) for the auditor-side checks, and it checks the status against fresh evidence: a pod the
operator lists as attested must prove, to *our* nonce, the key and bundle the status claims.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

GROUP = "cmcp.dev"
VERSION = "v1alpha1"
PLURAL = "mcproutes"
DEFAULT_ENCLAVE_PORT = 50051


@dataclass(frozen=True)
class RouteRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> RouteRef:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"route must be NAMESPACE/NAME, got {text!r}")
        return cls(namespace, name)


async def _read(kubeconfig: str | None, ref: RouteRef) -> dict[str, Any]:
    from kubernetes_asyncio import client, config

    api_client = await config.new_client_from_config(config_file=kubeconfig)
    async with api_client:
        api = client.CustomObjectsApi(api_client)
        obj: dict[str, Any] = await api.get_namespaced_custom_object(
            GROUP, VERSION, ref.namespace, PLURAL, ref.name
        )
    return obj


def read_route(kubeconfig: str | None, ref: RouteRef) -> dict[str, Any]:
    """The McpRoute object (spec and status) as the API server returns it."""
    return asyncio.run(_read(kubeconfig, ref))


def attested_addresses(route: dict[str, Any]) -> list[str]:
    """gRPC ``host:port`` of every pod the status lists as attested at the current revision."""
    out = []
    for pod in (route.get("status") or {}).get("pods") or []:
        address = str(pod.get("address") or "")
        if pod.get("attested") and address:
            out.append(address if ":" in address else f"{address}:{DEFAULT_ENCLAVE_PORT}")
    return out


def route_audience(route: dict[str, Any]) -> str | None:
    """The permit audience the route's enclaves measured: ``spec.audience``, else derived from
    the upstream as the CRD documents (the URL, or ``scheme://name.namespace.svc:port/path``)."""
    spec = route.get("spec") or {}
    if spec.get("audience"):
        return str(spec["audience"])
    upstream = spec.get("upstream") or {}
    if upstream.get("url"):
        return str(upstream["url"])
    service = upstream.get("service")
    if isinstance(service, dict) and service.get("name"):
        namespace = service.get("namespace") or (route.get("metadata") or {}).get("namespace", "default")
        return (
            f"{service.get('scheme', 'http')}://{service['name']}.{namespace}.svc:{service['port']}"
            f"{service.get('path', '/mcp')}"
        )
    return None


@dataclass(frozen=True)
class ClusterAccess:
    """Read/write access to the cluster behind a target (``--kubeconfig`` + ``--route``)."""

    kubeconfig: str | None
    route: RouteRef


@dataclass(frozen=True)
class BundleProbe:
    """What the cluster did with a PolicyBundle the suite submitted."""

    rejected: bool  # refused at admission (the validating webhook)
    valid: str | None  # else: the Valid condition's status once the operator reported it
    message: str


async def _probe_bundle(access: ClusterAccess, name: str, files: dict[str, str], wait: float) -> BundleProbe:
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.exceptions import ApiException

    namespace = access.route.namespace
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PolicyBundle",
        "metadata": {"name": name, "labels": {"cmcp.dev/conformance-probe": "true"}},
        "spec": {"files": files},
    }
    api_client = await config.new_client_from_config(config_file=access.kubeconfig)
    async with api_client:
        api = client.CustomObjectsApi(api_client)
        try:
            await api.create_namespaced_custom_object(GROUP, VERSION, namespace, "policybundles", body)
        except ApiException as exc:
            return BundleProbe(rejected=True, valid=None, message=str(exc.body or exc.reason))
        try:
            deadline = asyncio.get_running_loop().time() + wait
            valid: str | None = None
            message = "the operator reported no Valid condition"
            while asyncio.get_running_loop().time() < deadline:
                obj = await api.get_namespaced_custom_object(GROUP, VERSION, namespace, "policybundles", name)
                for cond in (obj.get("status") or {}).get("conditions") or []:
                    if cond.get("type") == "Valid":
                        valid, message = str(cond.get("status")), str(cond.get("message", ""))
                if valid is not None:
                    break
                await asyncio.sleep(1.0)
            return BundleProbe(rejected=False, valid=valid, message=message)
        finally:
            await api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "policybundles", name)


def probe_bundle(
    access: ClusterAccess, name: str, files: dict[str, str], *, wait: float = 60.0
) -> BundleProbe:
    """Submit a PolicyBundle in the route's namespace, see how the cluster treats it, delete it."""
    return asyncio.run(_probe_bundle(access, name, files, wait))
