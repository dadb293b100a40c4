"""Reads an ``McpRoute``'s status from the apiserver for the gateway and the guard.

Both callers take only *addresses* and the route's pinned initdata digests from here: each
attests every endpoint itself (its own nonce, its own release manifests, its own route,
audience and mode) before trusting a key, so a wrong or hostile status can deny service but
never make a key trusted that fails those checks. The status's ``keyThumbprint`` /
``publicKeyJwk`` are deliberately never used.

Cluster credentials: as every component finds them (:mod:`cmcp_core.kube_config`: an explicit
kubeconfig, ``$KUBECONFIG``, the pod's in-cluster ServiceAccount, ``~/.kube/config``). The
reader needs ``get`` on ``mcproutes.cmcp.dev`` in the route's namespace, nothing more.

Needs the ``cmcp-core[kubernetes]`` extra; the enclave never imports this module. The client
library is imported on the first read, not with this module: it adds tens of MiB of resident
memory (docs/benchmarks.md, "Memory with open sessions") that a gateway or guard with fixed
endpoints should not pay.
"""

from __future__ import annotations

from cmcp_core.kube_config import load_configuration
from cmcp_core.route_status import GROUP, PLURAL, VERSION, RouteRef, RouteStatus


async def read_route_status(
    route: RouteRef, kubeconfig: str | None = None, group: str = GROUP
) -> RouteStatus:
    """One ``get`` of the ``McpRoute``; its status, typed. Raises on any API error."""
    from kubernetes_asyncio import client  # lazy: see the module docstring

    configuration = await load_configuration(kubeconfig)
    async with client.ApiClient(configuration=configuration) as api:
        obj = await client.CustomObjectsApi(api).get_namespaced_custom_object(
            group, VERSION, route.namespace, PLURAL, route.name
        )
    return RouteStatus.from_status(obj.get("status") if isinstance(obj, dict) else None)


class McpRouteSource:
    """A bound :func:`read_route_status`: the zero-argument source callers poll."""

    def __init__(self, route: RouteRef, kubeconfig: str | None = None, group: str = GROUP) -> None:
        self.route = route
        self.kubeconfig = kubeconfig
        self.group = group

    async def read(self) -> RouteStatus:
        return await read_route_status(self.route, self.kubeconfig, self.group)
