"""Enclave endpoint source: the operator's published ``McpRoute`` status (kubernetes_asyncio).

Shared by the gateway and the upstream guard. Both take only *addresses* from here: each
attests every endpoint itself (its own nonce, its own policy) before trusting a key, so a
wrong or hostile status can deny service but never make a key trusted. The status's
``keyThumbprint`` / ``publicKeyJwk`` are deliberately never read.

Accepted status shape: ``status.pods[]`` entries (``cmcp_operator.route_status.pod_entry``)
with ``address`` ("ip" or "ip:port", port default 50051), skipped unless ``attested`` is true
(the operator has not appraised it yet, or it failed; attesting it ourselves would only cost
a round trip to an enclave that is not serving).

Cluster credentials: an explicit kubeconfig path, else ``$KUBECONFIG`` (as kubectl does; a
``:``-separated list is merged), else the pod's in-cluster ServiceAccount, else
``~/.kube/config``. The reader needs ``get`` on ``mcproutes.cmcp.dev`` in the route's
namespace, nothing more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cmcp_core.crd import GROUP as GROUP
from cmcp_core.crd import ROUTE_PLURAL
from cmcp_core.crd import VERSION as VERSION

PLURAL = ROUTE_PLURAL
DEFAULT_PORT = 50051


@dataclass(frozen=True)
class RouteRef:
    """Which ``McpRoute`` to follow."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> RouteRef:
        """``NAMESPACE/NAME`` (the CLI form); ``ValueError`` for anything else."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def endpoints_from_status(status: Any) -> list[str]:
    """The ``HOST:PORT`` of every pod entry the operator marked attested, in status order."""
    if not isinstance(status, dict):
        return []
    entries = status.get("pods") or []
    out: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("attested") is not True:
            continue
        address = entry.get("address")
        if isinstance(address, str) and address:
            out.append(address if ":" in address else f"{address}:{DEFAULT_PORT}")
    return out


async def _load_configuration(kubeconfig: str | None) -> Any:
    """A fresh client configuration per read, so rotated ServiceAccount tokens are picked up.

    Loaded into a private ``Configuration`` (never the process-wide default), so two sources
    with different credentials in one process cannot interfere.
    """
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        await config.load_kube_config(config_file=path, client_configuration=configuration)
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    return configuration


async def read_route_endpoints(
    route: RouteRef, kubeconfig: str | None = None, group: str = GROUP
) -> list[str]:
    """One ``get`` of the ``McpRoute``; its attested pod addresses. Raises on any API error."""
    from kubernetes_asyncio import client

    configuration = await _load_configuration(kubeconfig)
    async with client.ApiClient(configuration=configuration) as api:
        obj = await client.CustomObjectsApi(api).get_namespaced_custom_object(
            group, VERSION, route.namespace, PLURAL, route.name
        )
    return endpoints_from_status(obj.get("status") if isinstance(obj, dict) else None)


class McpRouteSource:
    """A bound :func:`read_route_endpoints`: the zero-argument address source callers poll."""

    def __init__(self, route: RouteRef, kubeconfig: str | None = None, group: str = GROUP) -> None:
        self.route = route
        self.kubeconfig = kubeconfig
        self.group = group

    async def endpoints(self) -> list[str]:
        return await read_route_endpoints(self.route, self.kubeconfig, self.group)
