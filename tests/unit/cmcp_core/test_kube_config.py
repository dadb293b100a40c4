"""``cmcp_core.kube_config``: in a pod (the ServiceAccount at its standard path, no kubeconfig)
the gateway's and guard's route reader reach the apiserver at ``KUBERNETES_SERVICE_HOST/PORT``
over TLS checked against the ServiceAccount's CA, with its token; ``$KUBECONFIG`` still wins.
A loader that knows only kubeconfig files (the weakened variant) finds no cluster there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmcp_core.kube_config import explicit_kubeconfig, in_cluster_server
from tests.helpers.in_cluster import TOKEN, needs_mount_namespaces, run_in_pod, stand_in_apiserver

READ_ROUTE = """
import asyncio
from cmcp_core.route_source import read_route_status
from cmcp_core.route_status import RouteRef
print(asyncio.run(read_route_status(RouteRef("cmcp", "r"))))
"""


@needs_mount_namespaces
def test_in_a_pod_the_route_reader_uses_the_service_account(tmp_path: Path) -> None:
    with stand_in_apiserver(tmp_path) as apiserver:
        ran = run_in_pod(READ_ROUTE, apiserver, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert apiserver.seen == [("/apis/cmcp.dev/v1alpha1/namespaces/cmcp/mcproutes/r", f"Bearer {TOKEN}")]


@needs_mount_namespaces
def test_a_kubeconfig_named_by_the_environment_wins_over_the_service_account(tmp_path: Path) -> None:
    with stand_in_apiserver(tmp_path) as apiserver:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {
                "server": f"https://127.0.0.1:{apiserver.port}",
                "certificate-authority": str(apiserver.service_account / "ca.crt")}}],
            "users": [{"name": "u", "user": {"token": "from-the-kubeconfig"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
        ran = run_in_pod(READ_ROUTE, apiserver, tmp_path, env={"KUBECONFIG": str(kubeconfig)})
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert [auth for _, auth in apiserver.seen] == ["Bearer from-the-kubeconfig"]


@needs_mount_namespaces
def test_a_loader_that_knows_only_kubeconfig_files_finds_no_cluster_in_a_pod(tmp_path: Path) -> None:
    """The weakened variant: what the test above would catch in a component that skipped the
    ServiceAccount."""
    weakened = READ_ROUTE.replace("import asyncio\n", """import asyncio
from kubernetes_asyncio import config
import cmcp_core.route_source as source
async def kubeconfig_only(kubeconfig=None):
    from kubernetes_asyncio import client
    configuration = client.Configuration()
    await config.load_kube_config(client_configuration=configuration)
    return configuration
source.load_configuration = kubeconfig_only
""")
    with stand_in_apiserver(tmp_path) as apiserver:
        ran = run_in_pod(weakened, apiserver, tmp_path)
    assert ran.returncode != 0 and "ConfigException" in ran.stderr
    assert apiserver.seen == []


def test_the_explicit_kubeconfig_is_the_argument_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert explicit_kubeconfig() is None
    monkeypatch.setenv("KUBECONFIG", "/env/config")
    assert explicit_kubeconfig() == "/env/config"
    assert explicit_kubeconfig("/flag/config") == "/flag/config"
    monkeypatch.setenv("KUBECONFIG", "")
    assert explicit_kubeconfig() is None


@pytest.mark.parametrize(("host", "port", "server"), [
    ("10.96.0.1", "443", "https://10.96.0.1:443"), ("fd00::1", "6443", "https://[fd00::1]:6443"),
    ("", "443", None), ("10.96.0.1", "", None)])
def test_the_in_cluster_server_is_the_kubelets_service_address(
        host: str, port: str, server: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    assert in_cluster_server() == server
