"""Where every component finds the apiserver and its credentials: one order for all of them.

An explicit kubeconfig path, else ``$KUBECONFIG`` (as kubectl does; a ``:``-separated list is
merged), else the pod's in-cluster ServiceAccount (the token, CA and namespace the kubelet
projects under :data:`SERVICE_ACCOUNT_DIR`, the apiserver at ``KUBERNETES_SERVICE_HOST`` /
``KUBERNETES_SERVICE_PORT``), else ``~/.kube/config``. In a pod nothing sets ``KUBECONFIG``, so
the ServiceAccount is used; on a workstation the kubeconfig is, as the user expects.

Needs the ``cmcp-core[kubernetes]`` extra; the client library is imported on first use (see
:mod:`cmcp_core.route_source`), and the enclave never imports this module.
"""

from __future__ import annotations

import os
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def explicit_kubeconfig(kubeconfig: str | None = None) -> str | None:
    """The kubeconfig the caller or ``$KUBECONFIG`` names, if any (it wins over the ServiceAccount)."""
    return kubeconfig or os.environ.get("KUBECONFIG") or None


def in_cluster_server() -> str | None:
    """The apiserver's address as the kubelet gives it to every pod (``KUBERNETES_SERVICE_HOST`` /
    ``KUBERNETES_SERVICE_PORT``; an IPv6 host in brackets), or ``None`` outside a pod."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


async def load_configuration(kubeconfig: str | None = None) -> Any:
    """A fresh client ``Configuration`` in the order the module docstring gives.

    Fresh on every call, so a rotated ServiceAccount token is picked up, and private (never the
    process-wide default), so two sources with different credentials in one process cannot
    interfere.
    """
    from kubernetes_asyncio import client, config  # lazy: see the module docstring

    configuration = client.Configuration()
    path = explicit_kubeconfig(kubeconfig)
    if path:
        await config.load_kube_config(config_file=path, client_configuration=configuration)
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    return configuration
