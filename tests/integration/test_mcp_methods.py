"""Every MCP method under policy, end to end: mcp SDK client -> gateway -> real enclave process ->
guard -> mcp SDK upstream (examples/realistic, whose catalog offers the patient record template
``ehr://patients/{patient_id}``, ``docs://handbook`` and the prompt ``summarise_record``; the
upstream also serves ``ehr://export/all``, which the catalog does not name).

The attackers: an agent that reads a record as a resource and then mails it out (the taint must
hold as it does for the tool that reads the same record), one that reads what the catalog does
not offer, and the host going around the gateway to the guarded upstream with no permit, or with
a permit for another method.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference, ResourceTemplateReference

from cmcp_core import permit as permits
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.upstream import HANDBOOK, PATIENT_TEMPLATE, RECORD_PROMPT, UNCATALOGUED_RESOURCE
from tests.helpers.gateway_stack import AUDIENCE, agent, get_permit, run_stack

MODES = ["auto", "legacy"]
MAIL = {"to": ["bob@partner.example"], "subject": "record"}


def _code(error: MCPError) -> str:
    data: Any = error.error.data
    return str(data["error_code"])


@pytest.mark.parametrize("mode", MODES)
async def test_lists_show_only_what_the_catalog_offers_and_policy_allows(
    enclave: EnclaveProcess, mode: str
) -> None:
    async with (
        run_stack([enclave], audience=AUDIENCE, tokens={"tok-lister": f"lister-{mode}"}) as stack,
        agent(stack.url, token="tok-lister", mode=mode) as client,
    ):
        resources = await client.list_resources()
        assert [str(r.uri) for r in resources.resources] == [HANDBOOK]  # not ehr://export/all
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == [PATIENT_TEMPLATE]
        prompts = await client.list_prompts()
        assert [p.name for p in prompts.prompts] == [RECORD_PROMPT]


@pytest.mark.parametrize("mode", MODES)
async def test_resources_prompts_and_completion_are_decided_and_relayed(
    enclave: EnclaveProcess, mode: str
) -> None:
    async with (
        run_stack([enclave], audience=AUDIENCE, tokens={"tok-reader": f"reader-{mode}"}) as stack,
        agent(stack.url, token="tok-reader", mode=mode) as client,
    ):
        handbook = await client.read_resource(HANDBOOK)
        assert handbook.contents[0].text == "Be kind. Lock your screen."  # type: ignore[union-attr]
        prompt = await client.get_prompt(RECORD_PROMPT, {"audience": "auditor"})
        assert "auditor" in prompt.messages[0].content.text  # type: ignore[union-attr]
        completion = await client.complete(PromptReference(type="ref/prompt", name=RECORD_PROMPT),
                                           {"name": "audience", "value": "cl"})
        assert completion.completion is not None
        await client.complete(ResourceTemplateReference(type="ref/resource", uri=PATIENT_TEMPLATE),
                              {"name": "patient_id", "value": "p-"})
        assert (stack.upstream.counter[HANDBOOK], stack.upstream.counter[RECORD_PROMPT]) == (1, 1)


@pytest.mark.parametrize("mode", MODES)
async def test_what_the_catalog_does_not_offer_is_denied_and_never_runs(
    enclave: EnclaveProcess, mode: str
) -> None:
    async with (
        run_stack([enclave], audience=AUDIENCE, tokens={"tok-prober": f"prober-{mode}"}) as stack,
        agent(stack.url, token="tok-prober", mode=mode) as client,
    ):
        with pytest.raises(MCPError) as unlisted:
            await client.read_resource(UNCATALOGUED_RESOURCE)
        assert _code(unlisted.value) == "RESOURCE_NOT_IN_CATALOG"
        assert unlisted.value.error.data["decision"]["document"]  # signed, like a tool deny
        with pytest.raises(MCPError) as no_prompt:
            await client.get_prompt("exfiltrate_everything")
        assert _code(no_prompt.value) == "PROMPT_NOT_IN_CATALOG"
        with pytest.raises(MCPError) as logging_denied:  # no policy permits set_log_level
            await client.set_logging_level("debug")
        assert _code(logging_denied.value) == "POLICY_DENY"
        assert stack.upstream.counter.total() == 0


async def test_a_record_read_as_a_resource_taints_the_agent_like_the_tool(enclave: EnclaveProcess) -> None:
    """The taint rule was written for tools; reading the same PHI as a resource must not dodge it,
    in this session or the next."""
    async with (
        run_stack([enclave], audience=AUDIENCE, tokens={"tok-taint": "resource-reader"}) as stack,
    ):
        async with agent(stack.url, token="tok-taint", mode="legacy") as client:
            record = await client.read_resource("ehr://patients/p-17")
            assert "J45.909" in record.contents[0].text  # type: ignore[union-attr]
            with pytest.raises(MCPError) as denied:
                await client.call_tool("email.send_external", MAIL)
        doc = json.loads(denied.value.error.data["decision"]["document"])
        assert doc["policy_ids"] == ["policies/taint.cedar#no-external-send-after-phi"]
        async with agent(stack.url, token="tok-taint", mode="legacy") as fresh:  # a new session
            with pytest.raises(MCPError) as still:
                await fresh.call_tool("email.send_external", MAIL)
        assert _code(still.value) == "POLICY_DENY"
        assert stack.upstream.counter["email.send_external"] == 0
        assert stack.upstream.counter[PATIENT_TEMPLATE] == 1


def _direct(method: str, params: dict[str, str], permit: str | None = None) -> tuple[dict[str, str], bytes]:
    """A stateless (2026-07-28) request for a resource, straight to the upstream."""
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2026-07-28", "mcp-method": method, "mcp-name": params["uri"]}
    if permit is not None:
        headers[permits.PERMIT_HEADER] = permit
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    return headers, json.dumps(body).encode()


async def test_the_host_cannot_read_a_resource_around_the_gateway(enclave: EnclaveProcess) -> None:
    """Straight to the guarded upstream: no permit, or a tool's permit, reads nothing; the
    enclave's permit for exactly this read reads it once."""
    async with run_stack([enclave], audience=AUDIENCE) as stack, httpx.AsyncClient(timeout=30) as http:
        read = {"uri": "ehr://patients/p-1"}
        headers, body = _direct("resources/read", read)
        refused = await http.post(stack.upstream.url, headers=headers, content=body)
        assert refused.status_code == 403
        assert refused.json()["error"]["data"]["error_code"] == "PERMIT_MISSING"
        tool_permit = await get_permit(enclave.address)  # payments.transfer, allowed
        headers, body = _direct("resources/read", read, tool_permit)
        wrong = await http.post(stack.upstream.url, headers=headers, content=body)
        assert wrong.json()["error"]["data"]["error_code"] == "PERMIT_METHOD_MISMATCH"
        assert stack.upstream.counter.total() == 0
        permit = await get_permit(enclave.address, tool="ehr://patients/p-1", arguments={},
                                  method="resources/read")
        headers, body = _direct("resources/read", read, permit)
        assert (await http.post(stack.upstream.url, headers=headers, content=body)).status_code == 200
        again = await http.post(stack.upstream.url, headers=headers, content=body)
        assert again.json()["error"]["data"]["error_code"] == "PERMIT_REPLAYED"
        assert stack.upstream.counter[PATIENT_TEMPLATE] == 1
