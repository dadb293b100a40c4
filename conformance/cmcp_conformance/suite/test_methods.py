"""METHOD-001..003: every MCP method is under policy, not only ``tools/call``.

METHOD-001 plays an agent: through the gateway, resources and prompts are listed only as the
catalog and Cedar allow, an uncatalogued resource is denied with a signed decision and never
read, and a catalogued one is read exactly once. METHOD-002 plays the host going around the
gateway: every method the enclave decides needs its own permit at the guard, and a permit for a
tool call reads no resource. METHOD-003 plays an agent (or a gateway) that invents the answer to
an upstream's question: nothing reaches the upstream that the enclave did not let be asked.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from cmcp_conformance.agent import DirectUpstream, agent, open_raw_session, post_jsonrpc, rpc_error
from cmcp_conformance.suite.conftest import Attested, need_upstream
from cmcp_conformance.suite.test_policy_tee import host_decide
from cmcp_conformance.target import TargetDeployment
from cmcp_core.decision import verify_decision
from cmcp_core.digest import b64url_decode
from cmcp_core.permit import PERMIT_HEADER

DENY_RPC = -32000
_ids = itertools.count(100)


@pytest.mark.conformance("METHOD-001")
def test_resources_and_prompts_are_decided_by_the_enclave(
    target: TargetDeployment, attested: Attested, counter: Callable[[], int]
) -> None:
    prof = target.profile

    async def scenario() -> None:
        async with agent(target) as a:
            session = a.session
            listed = [str(r.uri) for r in (await session.list_resources()).resources]
            assert prof.resource in listed, f"a catalogued resource is not listed: {listed}"
            assert prof.uncatalogued_resource not in listed, "resources/list offers an uncatalogued resource"
            prompts = [p.name for p in (await session.list_prompts()).prompts]
            assert prompts == [prof.prompt], f"prompts/list shows {prompts}"
            before = counter()
            with pytest.raises(MCPError) as denied:
                await session.read_resource(prof.uncatalogued_resource)
            data: Any = denied.value.error.data
            assert denied.value.error.code == DENY_RPC, data
            assert data["error_code"] == "RESOURCE_NOT_IN_CATALOG", data
            decision = verify_decision(str(data["decision"]["document"]).encode(),
                                       b64url_decode(data["decision"]["signature"]), attested.key,
                                       expected={"call_id": data["call_id"]})
            assert decision["method"] == "resources/read" and decision["effective"] == "deny"
            assert counter() == before, "the upstream served a resource outside the measured catalog"
            read = await session.read_resource(prof.resource)
            assert read.contents and read.contents[0].text == "a public note"  # type: ignore[union-attr]
            got = await session.get_prompt(prof.prompt, {"name": "conformance"})
            assert "conformance" in got.messages[0].content.text  # type: ignore[union-attr]
            assert counter() == before + 2, "the allowed read and prompt did not run exactly once each"

    asyncio.run(scenario())


@pytest.mark.conformance("METHOD-002")
def test_every_gated_method_needs_its_own_permit_at_the_guard(
    target: TargetDeployment, counter: Callable[[], int]
) -> None:
    url, audience = need_upstream(target)
    prof = target.profile
    host = DirectUpstream(url, client_name="method-002")
    requests: dict[str, dict[str, Any]] = {
        "resources/read": {"uri": prof.uncatalogued_resource},
        "prompts/get": {"name": prof.prompt},
        "completion/complete": {"ref": {"type": "ref/prompt", "name": prof.prompt},
                                "argument": {"name": "name", "value": "a"}},
        "logging/setLevel": {"level": "debug"},
        "subscriptions/listen": {"notifications": {"resourceSubscriptions": [prof.resource]}},
    }
    before = counter()
    for method, params in requests.items():
        body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params}
        out = rpc_error(post_jsonrpc(url, body, session_id=host.session_id))
        assert not out.ok and out.error_code == "PERMIT_MISSING", f"{method}, no permit: {out.describe()}"
    # A permit the host holds for an allowed tool call is no permit to read a resource.
    if target.enclave_address:  # the host asks the enclave as a gateway would (POLICY-TEE-004)
        _, tool_permit = host_decide(target, prof.allowed_tool, {"text": "x"}, audience=audience)
        out = rpc_error(post_jsonrpc(url, {"jsonrpc": "2.0", "id": next(_ids), "method": "resources/read",
                                           "params": {"uri": prof.uncatalogued_resource}},
                                     headers={PERMIT_HEADER: tool_permit}, session_id=host.session_id))
        assert not out.ok and out.error_code == "PERMIT_METHOD_MISMATCH", out.describe()
    assert counter() == before, "the guarded upstream ran a gated method without its permit"


_FORGED = {"inputResponses": {"confirm": {"action": "accept", "content": {"approved": True}}}}


@pytest.mark.conformance("METHOD-003")
def test_an_answer_needs_a_question_the_enclave_let_through(
    target: TargetDeployment, attested: Attested, counter: Callable[[], int]
) -> None:
    prof = target.profile
    arguments = {"text": "x"}
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call",
            "params": {"name": prof.allowed_tool, "arguments": arguments, **_FORGED}}
    session_id = open_raw_session(target.mcp_url, "method-003", headers=target.auth_headers())
    before = counter()
    out = rpc_error(post_jsonrpc(target.mcp_url, body, headers=target.auth_headers(), session_id=session_id))
    assert not out.ok and out.error_code == "INPUT_NOT_ASKED", out.describe()
    assert out.data is not None
    decision = verify_decision(str(out.data["decision"]["document"]).encode(),
                               b64url_decode(out.data["decision"]["signature"]), attested.key,
                               expected={"call_id": out.data["call_id"]})
    assert decision["effective"] == "deny" and decision["reason_code"] == "INPUT_NOT_ASKED"
    assert counter() == before, "the upstream ran a call carrying answers to no question"
    if target.enclave_address and target.upstream_url:  # the host with the plain call's permit
        url, audience = need_upstream(target)
        host = DirectUpstream(url, client_name="method-003")
        _, permit = host_decide(target, prof.allowed_tool, arguments, audience=audience)
        carrying = {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call",
                    "params": {"name": prof.allowed_tool, "arguments": arguments, **_FORGED}}
        out = rpc_error(post_jsonrpc(url, carrying, headers={PERMIT_HEADER: permit},
                                     session_id=host.session_id))
        assert not out.ok and out.error_code == "PERMIT_ARGS_MISMATCH", out.describe()
        assert counter() == before, "the guarded upstream ran answers its permit does not bind"
