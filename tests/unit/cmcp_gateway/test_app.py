"""The gateway assembled: start-up attests each route's enclaves before serving, shutdown releases
everything, and a followed route tracks its McpRoute on every refresh."""

from __future__ import annotations

import httpx
import pytest

from cmcp_devkit.enclave import EnclaveProcess
from cmcp_gateway.app import Gateway, build
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.routes import SOLE_ROUTE_PATH
from tests.helpers.gateway_stack import AUDIENCE, gateway_config


def _route(enclave: EnclaveProcess, **changes: object) -> RouteConfig:
    fields: dict[str, object] = {"name": "demo", "upstream": "http://127.0.0.1:9/mcp", "audience": AUDIENCE,
                                 "enclaves": (enclave.address,),
                                 "expected_bundle_hashes": frozenset({enclave.bundle_hash})}
    return RouteConfig(**{**fields, **changes})  # type: ignore[arg-type]


async def test_startup_attests_the_routes_enclaves_before_serving(enclave: EnclaveProcess) -> None:
    gateway, app = build(gateway_config(_route(enclave)))
    assert app is gateway.front and gateway.routes == {}
    await gateway.startup()
    try:
        runtime = gateway.routes["/mcp/demo"]
        assert [e.address for e in runtime.pool.attested()] == [enclave.address]
        assert gateway.refresher.jobs, "re-attestation and idle reaping are scheduled"
        assert runtime.pool.policy.expected.audience == AUDIENCE
    finally:
        await gateway.shutdown()
    assert runtime.pool.endpoints == {}  # channels closed


async def test_a_route_pinned_to_another_bundle_trusts_nobody(enclave: EnclaveProcess) -> None:
    other = frozenset({"sha256:" + "0" * 64})
    gateway = Gateway(gateway_config(_route(enclave, expected_bundle_hashes=other)))
    await gateway.startup()
    try:
        assert gateway.routes["/mcp/demo"].pool.attested() == []
    finally:
        await gateway.shutdown()


PATHS = [("/mcp/demo", 202), (SOLE_ROUTE_PATH, 202), ("/mcp/other", 404)]


@pytest.mark.parametrize(("path", "status"), PATHS)
async def test_the_front_serves_exactly_the_routes_paths(
    enclave: EnclaveProcess, path: str, status: int
) -> None:
    """An open route answers a notification with 202 without any decision; unknown paths are 404."""
    gateway, app = build(gateway_config(_route(enclave, open=True)))
    await gateway.startup()
    try:
        loopback = "http://127.0.0.1:8080"  # a gateway listening on loopback serves loopback names
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=loopback) as client:
            resp = await client.post(path, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                     headers={"accept": "application/json, text/event-stream"})
    finally:
        await gateway.shutdown()
    assert resp.status_code == status
