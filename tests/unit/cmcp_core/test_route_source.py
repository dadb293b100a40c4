"""``cmcp_core.route_source``: reading an McpRoute's attested addresses from the API server.

The API server is a stand-in aiohttp app on loopback; the Kubernetes client and its kubeconfig
handling are real. (Moved from tests/unit/cmcp_guard/test_trust.py, plus error paths.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client.exceptions import ApiException

from cmcp_core.kube_config import load_configuration
from cmcp_core.route_source import McpRouteSource, read_route_status
from cmcp_core.route_status import RouteRef
from cmcp_devkit.upstream import free_port


async def test_kubeconfig_env_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://kube.example:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert (await load_configuration(None)).host == "https://kube.example:6443"
    other = tmp_path / "explicit"
    other.write_text(json.dumps({**doc, "clusters": [{"name": "c", "cluster": {"server": "https://b:1"}}]}))
    assert (await load_configuration(str(other))).host == "https://b:1"


async def test_route_reader_gets_the_status_addresses(tmp_path: Path) -> None:
    """The thin reader against a stand-in API server: one authenticated ``get``, addresses out."""
    seen: list[str] = []

    async def get_route(request: web.Request) -> web.Response:
        route = f"{request.match_info['ns']}/{request.match_info['name']}"
        seen.append(f"{route} {request.headers['authorization']}")
        status = {"pods": [{"address": "10.1.2.3", "attested": True, "publicKeyJwk": {"kty": "OKP"}}]}
        return web.json_response({"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "status": status})

    app = web.Application()
    app.router.add_get("/apis/cmcp.dev/v1alpha1/namespaces/{ns}/mcproutes/{name}", get_route)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "guard-token"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps(doc))
        source = McpRouteSource(RouteRef("cmcp", "demo"), kubeconfig=str(path))
        assert (await source.read()).attested_endpoints() == ["10.1.2.3:50051"]
        assert seen == ["cmcp/demo Bearer guard-token"]
    finally:
        await runner.cleanup()


def _kubeconfig(tmp_path: Path, server: str) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A stand-in API server whose reply the test sets: ``reply["status"]``/``reply["body"]``."""
    reply: dict[str, Any] = {"status": 200, "body": {}}

    async def get_route(request: web.Request) -> web.Response:
        return web.json_response(reply["body"], status=reply["status"])

    app = web.Application()
    app.router.add_get("/apis/{group}/v1alpha1/namespaces/{ns}/mcproutes/{name}", get_route)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", reply
    finally:
        await runner.cleanup()


async def test_api_errors_are_raised_not_read_as_no_endpoints(
    api_server: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    server, reply = api_server
    reply.update(status=404, body={"kind": "Status", "code": 404, "reason": "NotFound"})
    with pytest.raises(ApiException) as info:
        await read_route_status(RouteRef("cmcp", "missing"), _kubeconfig(tmp_path, server))
    assert info.value.status == 404


@pytest.mark.parametrize("body", [{"kind": "McpRoute"}, {"kind": "McpRoute", "status": "junk"},
                                  {"kind": "McpRoute", "status": {"pods": "junk"}}])
async def test_route_without_usable_status_has_no_endpoints(
    api_server: tuple[str, dict[str, Any]], tmp_path: Path, body: dict[str, Any]
) -> None:
    server, reply = api_server
    reply["body"] = body
    status = await read_route_status(RouteRef("cmcp", "new"), _kubeconfig(tmp_path, server))
    assert status.attested_endpoints() == [] and status.pinned_initdata() == frozenset()


async def test_group_is_configurable(api_server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    server, reply = api_server
    reply["body"] = {"status": {"pods": [{"address": "10.9.9.9:1", "attested": True}]}}
    source = McpRouteSource(RouteRef("ns", "r"), _kubeconfig(tmp_path, server), group="other.dev")
    assert (await source.read()).attested_endpoints() == ["10.9.9.9:1"]


def test_the_kubernetes_client_and_psycopg_are_loaded_only_when_needed() -> None:
    """A gateway or guard with fixed endpoints and SQLite stores never pays those libraries' memory."""
    probe = ("import sys, cmcp_core.route_source, cmcp_gateway.main, cmcp_guard.main; "
             "print('kubernetes_asyncio' in sys.modules, 'psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
