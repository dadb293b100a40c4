"""IDENT-001..003: who the agent is, the enclave verifies itself; tokens are handled as MCP
authorization requires.

They run on a route whose bundle trusts a token issuer (``target.identity``). IDENT-001 plays a
gateway that lies: with the gateway's key it opens a session and asks a decision for a principal
the token does not prove. IDENT-002 plays an agent with bad tokens: each is refused with ``401``
and a challenge naming the route's protected resource metadata, and no tool runs. IDENT-003
plays a host that hands a token to the upstream: the guard refuses it.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import grpc
import httpx
import pytest

from cmcp_conformance.agent import CallOutcome, DirectUpstream, initialize_request, post_jsonrpc, rpc_error
from cmcp_conformance.target import GRPC_TIMEOUT_SECONDS, IdentityAccess, TargetDeployment
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc

ERROR_METADATA_KEY = "cmcp-error-code"
WELL_KNOWN = "/.well-known/oauth-protected-resource"


def _identity(target: TargetDeployment) -> IdentityAccess:
    if target.identity is None:
        pytest.skip("target has no route whose bundle trusts a token issuer (identity)")
    return target.identity


def _refused_code(call: Any) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        code: str = dict(exc.trailing_metadata() or ()).get(ERROR_METADATA_KEY, f"gRPC {exc.code().name}")
        return code
    return "accepted"


@pytest.mark.conformance("IDENT-001")
def test_the_enclave_decides_only_for_the_principal_the_token_proves(target: TargetDeployment) -> None:
    identity = _identity(target)
    if target.gateway_key is None:
        pytest.skip("playing the gateway needs its identity key (the enclave takes calls only from it)")
    alice, mallory = identity.token(f"alice-{uuid.uuid4().hex[:8]}"), identity.token("mallory")
    alice_name = _subject(alice)
    channel = target.enclave_channel(identity.enclave_address)
    with channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)

        def open_as(principal: str, token: str) -> Any:
            resp = stub.OpenSession(enclave_pb2.OpenSessionRequest(
                principal=principal, access_token=token, trail=target.principal_trail(principal)),
                timeout=GRPC_TIMEOUT_SECONDS)
            target.keep_trail(resp.audit_entries)
            return resp

        assert _refused_code(lambda: open_as(alice_name, "")) == "TOKEN_MISSING"
        assert _refused_code(lambda: open_as("admin", alice)) == "IDENTITY_MISMATCH"
        session = open_as(alice_name, alice).session_id
        arguments = {"text": "x"}

        def decide(principal: str, token: str) -> Any:
            return stub.Decide(enclave_pb2.DecideRequest(
                session_id=session, call_id=uuid.uuid4().hex, principal=principal, method="tools/call",
                tool=target.profile.allowed_tool, arguments_json=json.dumps(arguments).encode(),
                arguments_digest=json_digest(arguments), audience=target.upstream_audience or "",
                access_token=token), timeout=GRPC_TIMEOUT_SECONDS)

        assert _refused_code(lambda: decide(alice_name, mallory)) == "IDENTITY_MISMATCH", \
            "the enclave decided for a principal the request's token does not prove"
        assert _refused_code(lambda: decide(alice_name, "")) == "TOKEN_MISSING"


def _subject(token: str) -> str:
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return str(claims["sub"])


def _tampered(token: str) -> str:
    head, body, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{head}.{body}.{flipped}"


def _encode(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _unsigned(token: str) -> str:
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return f"{_encode({'alg': 'none', 'typ': 'JWT'})}.{_encode({**claims, 'sub': 'admin'})}."


@pytest.mark.conformance("IDENT-002")
def test_bad_tokens_get_401_with_a_challenge_and_run_nothing(target: TargetDeployment) -> None:
    identity = _identity(target)
    before = target.upstream_calls()
    valid = identity.token("conformance-identity-agent")
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": target.profile.allowed_tool, "arguments": {"text": "x"}}}
    challenges: dict[str, str] = {}
    for name, token in (("none", None), ("tampered", _tampered(valid)), ("alg-none", _unsigned(valid)),
                        ("not-a-jwt", "opaque-" + uuid.uuid4().hex)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for body in (initialize_request("conformance-ident"), call):
            answer = post_jsonrpc(identity.mcp_url, body, headers=headers)
            assert answer.status_code == 401, f"{name} token: HTTP {answer.status_code} {answer.text[:200]}"
            challenge = answer.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge, \
                f"{name} token: no RFC 6750 challenge naming the metadata ({challenge!r})"
            assert (token is None) == ("invalid_token" not in challenge), challenge
            challenges[name] = challenge
    assert target.upstream_calls() == before, "a call with a bad token reached the upstream"
    metadata_url = challenges["none"].split('resource_metadata="', 1)[1].split('"', 1)[0]
    assert metadata_url.split("/", 3)[-1].startswith(WELL_KNOWN[1:]), metadata_url
    local = identity.mcp_url.split("/mcp/", 1)[0] + "/" + metadata_url.split("/", 3)[-1]
    metadata = httpx.get(local, timeout=10).json()
    assert metadata["resource"] == identity.resource and metadata["authorization_servers"], metadata
    accepted = post_jsonrpc(identity.mcp_url, call, headers={"Authorization": f"Bearer {valid}"})
    outcome: CallOutcome = rpc_error(accepted)
    assert accepted.status_code == 200 and outcome.ok, f"a valid token was refused: {outcome.describe()}"


@pytest.mark.conformance("IDENT-003")
def test_the_guard_refuses_a_request_that_carries_a_token(target: TargetDeployment) -> None:
    if not target.upstream_url:
        pytest.skip("target offers no direct access to the guarded upstream")
    token = target.identity.token("conformance-host") if target.identity else "any-bearer-token"
    headers = {"Authorization": f"Bearer {token}"}
    answer = post_jsonrpc(target.upstream_url, initialize_request("host-with-a-token"), headers=headers)
    outcome = rpc_error(answer)
    assert answer.status_code == 403 and outcome.error_code == "AGENT_TOKEN_FORWARDED", \
        f"the guard let a request with a token through: HTTP {answer.status_code} {outcome.describe()}"
    assert DirectUpstream(target.upstream_url).session_id is not None  # the same request without it passes
