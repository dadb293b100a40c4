"""The cluster target: a deployed gateway route plus what the McpRoute's status tells us.

The status names the expected ``bundleHash`` and, per enclave pod, its address, attestation
state and key thumbprint. The suite uses the address (when it is reachable from where the suite
runs) for the auditor-side checks, and it checks the status against fresh evidence: a pod the
operator lists as attested must prove, to *our* nonce, the key and bundle the status claims.

With ``--allow-disruption`` the target also gets :class:`RouteOutage`, the power to stop the
route's enclave (scale the McpRoute to 0) and bring it back, for the fail-closed checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cmcp_core.route_status import DEFAULT_PORT as DEFAULT_ENCLAVE_PORT
from cmcp_core.route_status import GROUP, PLURAL, VERSION, RouteRef


async def _read(kubeconfig: str | None, ref: RouteRef) -> dict[str, Any]:
    # only the cluster target reads the apiserver: other runs skip kubernetes_asyncio's import cost
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
    # only the cluster target reads the apiserver: other runs skip kubernetes_asyncio's import cost
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


# --------------------------------------------------------------------------------------------
# the opt-in "stop the enclave" power (--allow-disruption)
# --------------------------------------------------------------------------------------------

OUTAGE_TIMEOUT = 180.0  # scale down until no pod is left / scale up until attested again
POLL_SECONDS = 1.0


class OutageError(RuntimeError):
    """The route did not reach the state the outage power waited for."""


async def _scale(access: ClusterAccess, replicas: int | None) -> int:
    """``spec.replicas`` through the McpRoute's scale subresource; with ``replicas``, set it.
    Returns the value it had before."""
    # only the cluster target reads the apiserver: other runs skip kubernetes_asyncio's import cost
    from kubernetes_asyncio import client, config

    ref = access.route
    api_client = await config.new_client_from_config(config_file=access.kubeconfig)
    async with api_client:
        api = client.CustomObjectsApi(api_client)
        scale = await api.get_namespaced_custom_object_scale(GROUP, VERSION, ref.namespace, PLURAL, ref.name)
        before = int((scale.get("spec") or {}).get("replicas") or 0)
        if replicas is not None:
            await api.patch_namespaced_custom_object_scale(
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                # a JSON patch (the client sends a list as one); "add" also works when the Scale
                # omits replicas because it is 0
                [{"op": "add", "path": "/spec/replicas", "value": replicas}],
            )
    return before


def _wait_route(
    access: ClusterAccess, done: Callable[[dict[str, Any]], bool], what: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    route = read_route(access.kubeconfig, access.route)
    while not done(route):
        if time.monotonic() > deadline:
            pods = (route.get("status") or {}).get("pods") or []
            seen = [(p.get("pod"), p.get("attested"), p.get("reason")) for p in pods]
            raise OutageError(
                f"McpRoute {access.route.namespace}/{access.route.name}: {what} "
                f"not reached within {timeout:.0f}s (status pods: {seen})"
            )
        time.sleep(POLL_SECONDS)
        route = read_route(access.kubeconfig, access.route)
    return route


def no_enclave_pods(route: dict[str, Any]) -> bool:
    """The route's status lists no pod at all: none attested, and none still terminating (a
    terminating pod is listed unattested while its enclave may still be answering)."""
    return not ((route.get("status") or {}).get("pods") or [])


class RouteOutage:
    """Stop and restart the enforce route's enclave on a cluster, through the Kubernetes API.

    ``stop_enclave`` scales the McpRoute to 0 replicas through its scale subresource (the
    operator scales its Deployment down, so the enclave pods and their keys are gone) and waits
    until the route's status lists no pod; ``start_enclave`` restores the replica count it found
    and waits until that many pods are attested again, then hands their addresses to
    ``on_restored`` (a restarted enclave is a new pod: new address, new key). It disrupts the
    route for everyone using it, so the CLI grants it only with ``--allow-disruption``.
    ``restore`` (idempotent) puts the replica count back if a stop is still in force."""

    def __init__(
        self,
        access: ClusterAccess,
        *,
        on_restored: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = OUTAGE_TIMEOUT,
    ) -> None:
        self.access = access
        self.on_restored = on_restored
        self.timeout = timeout
        self.saved_replicas: int | None = None  # set while the route is scaled down by us

    def stop_enclave(self) -> None:
        if self.saved_replicas is not None:
            raise OutageError("the enclave is already stopped")
        before = asyncio.run(_scale(self.access, None))
        if before < 1:
            raise OutageError(f"McpRoute {self.access.route.name} has {before} replicas: nothing to stop")
        self.saved_replicas = before
        try:
            asyncio.run(_scale(self.access, 0))
            _wait_route(self.access, no_enclave_pods, "no enclave pod left", self.timeout)
        except BaseException:
            self.start_enclave()  # never leave the route scaled down
            raise

    def start_enclave(self) -> None:
        replicas = self.saved_replicas
        if replicas is None:
            raise OutageError("the enclave is not stopped")
        asyncio.run(_scale(self.access, replicas))
        self.saved_replicas = None
        route = _wait_route(
            self.access,
            lambda r: len(attested_addresses(r)) >= replicas,
            f"{replicas} attested enclave pod(s)",
            self.timeout,
        )
        if self.on_restored is not None:
            self.on_restored(route)

    def restore(self) -> None:
        if self.saved_replicas is not None:
            self.start_enclave()
