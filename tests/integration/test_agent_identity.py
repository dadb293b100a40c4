"""Agents authenticate with OAuth access tokens that the enclave verifies (issue 17), end to end.

Real parts: an enclave process whose measured bundle trusts a test issuer (real RS256 keys and
JWTs), the gateway with the route's ``authorization`` block, the guard in front of an ``mcp`` SDK
upstream, the official ``mcp`` client. Attackers: an agent with a forged, expired, not-yet-valid,
wrong-issuer, wrong-audience or ``alg: none`` token (refused with ``401`` before any decision);
a host that calls the enclave as a gateway that lies about the principal; a request that carries
a token to the upstream.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import NO_TRAIL, EnclaveProcess, start_enclave
from cmcp_devkit.issuer import RESOURCE, DevIssuer, identity_section
from cmcp_gateway.config import Authorization
from tests.helpers.gateway_stack import AUDIENCE, MitmEnclave, Stack, agent, run_stack
from tests.helpers.issuer import identity_bundle
from tests.paths import EXAMPLES

ISSUER = DevIssuer("https://issuer.example")
AUTHORIZATION = Authorization(RESOURCE, (ISSUER.issuer,), ("payments:write",))
METADATA = "https://gateway.example/.well-known/oauth-protected-resource/routes/demo/mcp"
TRANSFER = {"amount": 10, "currency": "EUR", "to": "acct-1"}


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    root = tmp_path_factory.mktemp("identity")
    bundle = identity_bundle(EXAMPLES / "realistic", root / "bundle", identity_section(ISSUER),
                             required_scopes={"payments.transfer": ["payments:write"]})
    with start_enclave(bundle, root / "enc", audience=AUDIENCE) as process:
        yield process


@pytest.fixture
async def mitm(enclave: EnclaveProcess) -> AsyncIterator[MitmEnclave]:
    relay = await MitmEnclave(enclave.address).start()
    yield relay
    await relay.stop()


@pytest.fixture
async def stack(enclave: EnclaveProcess, mitm: MitmEnclave) -> AsyncIterator[Stack]:
    """The gateway reaches the enclave through the relay (which counts Decide calls); the guard
    attests the enclave itself."""
    async with run_stack([mitm.address], audience=AUDIENCE, guard_enclaves=[enclave],
                         bundle_hashes=[enclave.bundle_hash], authorization=AUTHORIZATION) as running:
        yield running


async def _mcp_post(url: str, token: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2025-11-25"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url, headers=headers, json=body)


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def _unsigned(claims: dict[str, Any]) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_an_agent_with_a_valid_token_calls_and_the_token_never_reaches_the_upstream(
        stack: Stack) -> None:
    async with agent(stack.url, ISSUER.token("alice", scope="payments:write")) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"web.search", "payments.transfer"} <= tools
        result = await client.call_tool("payments.transfer", TRANSFER)
        assert not result.is_error
    assert stack.upstream.counter["payments.transfer"] == 1  # the guard let it run: no token came along


async def test_a_missing_token_gets_a_challenge_that_leads_to_the_metadata(stack: Stack) -> None:
    answer = await _mcp_post(stack.url, None, INITIALIZE)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA}"'
    base = stack.url.rsplit("/mcp", 1)[0]
    async with httpx.AsyncClient(timeout=10) as http:
        metadata = await http.get(base + "/.well-known/oauth-protected-resource/routes/demo/mcp")
    assert metadata.status_code == 200
    assert metadata.json() == {"resource": RESOURCE, "authorization_servers": [ISSUER.issuer],
                               "bearer_methods_supported": ["header"], "scopes_supported": ["payments:write"]}


@pytest.mark.parametrize("kind, code", [
    ("forged", "TOKEN_BAD_SIGNATURE"),
    ("unpinned-key", "TOKEN_KEY_UNTRUSTED"),
    ("alg-none", "TOKEN_BAD_SIGNATURE"),
    ("expired", "TOKEN_EXPIRED"),
    ("not-yet-valid", "TOKEN_NOT_YET_VALID"),
    ("wrong-issuer", "TOKEN_ISSUER_UNTRUSTED"),
    ("wrong-audience", "TOKEN_AUDIENCE_MISMATCH"),
    ("not-a-jwt", "TOKEN_MALFORMED"),
])
async def test_a_bad_token_gets_401_and_never_reaches_a_decision(
        stack: Stack, mitm: MitmEnclave, kind: str, code: str) -> None:
    now = time.time()
    token = {
        "forged": DevIssuer(ISSUER.issuer).token("admin", header={"kid": ISSUER.thumbprint}),
        "unpinned-key": DevIssuer(ISSUER.issuer).token("admin"),
        "alg-none": _unsigned({"iss": ISSUER.issuer, "sub": "admin", "aud": RESOURCE, "exp": int(now) + 600}),
        "expired": ISSUER.token("alice", now=now - 7200),
        "not-yet-valid": ISSUER.token("alice", now=now + 7200),
        "wrong-issuer": DevIssuer("https://rogue.example").token("alice"),
        "wrong-audience": ISSUER.token("alice", audience="https://other.example/mcp"),
        "not-a-jwt": "opaque-token-value",
    }[kind]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "web.search", "arguments": {"query": "q"}}}
    for body in (INITIALIZE, call):
        answer = await _mcp_post(stack.url, token, body)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["data"]["error_code"] == code
        assert answer.headers["www-authenticate"] == (
            f'Bearer resource_metadata="{METADATA}", error="invalid_token", error_description="{code}"')
    assert not mitm.decide_seen.is_set()
    assert stack.upstream.counter["web.search"] == 0


async def test_a_missing_scope_gets_403_insufficient_scope(stack: Stack) -> None:
    async with agent(stack.url, ISSUER.token("alice", scope="files:read")) as client:
        with pytest.raises(MCPError):
            await client.call_tool("payments.transfer", TRANSFER)
    token = ISSUER.token("alice", scope="files:read")
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "payments.transfer", "arguments": TRANSFER}}
    answer = await _mcp_post(stack.url, token, call)
    assert answer.status_code == 403
    assert answer.json()["error"]["data"]["error_code"] == "INSUFFICIENT_SCOPE"
    assert answer.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{METADATA}", error="insufficient_scope", scope="payments:write"')
    assert stack.upstream.counter["payments.transfer"] == 0


async def test_a_gateway_that_lies_about_the_principal_is_refused_by_the_enclave(
        enclave: EnclaveProcess) -> None:
    """The host calls the enclave's gRPC API itself, as a gateway that names another principal."""
    alice = ISSUER.token("alice")
    async with grpc.aio.insecure_channel(enclave.address) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="bob", trail=NO_TRAIL,
                                                                  access_token=alice))
        assert dict(caught.value.trailing_metadata())["cmcp-error-code"] == "IDENTITY_MISMATCH"
        opened = await stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="alice", trail=NO_TRAIL,
                                                                       access_token=alice))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Decide(enclave_pb2.DecideRequest(
                session_id=opened.session_id, call_id="lie-1", principal="alice", method="tools/call",
                tool="web.search", arguments_json=b'{"query":"q"}',
                arguments_digest=json_digest({"query": "q"}), audience=AUDIENCE,
                access_token=ISSUER.token("mallory")))
        assert dict(caught.value.trailing_metadata())["cmcp-error-code"] == "IDENTITY_MISMATCH"


async def test_the_guard_refuses_a_request_that_carries_a_token(stack: Stack) -> None:
    headers = {"authorization": f"Bearer {ISSUER.token('alice')}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(stack.upstream.url, headers=headers, json=INITIALIZE)
    assert answer.status_code == 403
    assert answer.json()["error"]["data"]["error_code"] == "AGENT_TOKEN_FORWARDED"
