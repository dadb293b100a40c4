"""Optional endpoint source: the operator's published ``McpRoute`` status (kubernetes_asyncio).

The gateway only takes *addresses* from here: it attests every endpoint itself before trusting
its key, so a wrong or hostile status can deny service but never make a key trusted. Accepted
status shape: ``status.pods[]`` entries (``cmcp_operator.route_status.pod_entry``) with
``address`` ("ip" or "ip:port", port default 50051), skipped unless ``attested`` is true.
"""

from __future__ import annotations

from typing import Any

from cmcp_gateway.config import KubeSource

GROUP = "cmcp.dev"
VERSION = "v1alpha1"
PLURAL = "mcproutes"
DEFAULT_PORT = 50051


def endpoints_from_status(status: Any) -> list[str]:
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


class McpRouteSource:
    def __init__(self, source: KubeSource, group: str = GROUP) -> None:
        self.source = source
        self.group = group

    async def endpoints(self) -> list[str]:
        from kubernetes_asyncio import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config()
        async with client.ApiClient() as api:
            obj = await client.CustomObjectsApi(api).get_namespaced_custom_object(
                self.group, VERSION, self.source.namespace, PLURAL, self.source.name
            )
        return endpoints_from_status(obj.get("status") if isinstance(obj, dict) else None)
