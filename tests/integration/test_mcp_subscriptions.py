"""Resource subscriptions through the gateway, under policy, end to end.

mcp SDK client -> gateway -> real enclave process -> guard -> the everything upstream (MCP
2026-07-28, which follows resources with ``subscriptions/listen``). A 2026-07-28 agent opens a
listen stream itself; a handshake-era agent subscribes with ``resources/subscribe`` and hears the
updates on its session's GET stream, which the gateway feeds from a listen stream of its own.
Either way the enclave decides ``subscribe_resource`` on each resource and the guard admits the
listen only with a permit for exactly those resources.

The attackers: an agent subscribing to patient records the policy keeps from it (refused, no
stream), and the host asking the guarded upstream for a listen with no permit or with more
resources than its permit names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.everything import PATIENT_RECORD, WATCHED, run_everything
from tests.helpers.everything_stack import ALLOW, FORBID_PHI, everything_bundle, everything_stack
from tests.helpers.gateway_stack import (
    AUDIENCE,
    MODERN_META,
    agent,
    get_permit,
    make_guard,
)

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
SSE_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    root: Path = tmp_path_factory.mktemp("subs")
    with start_enclave(everything_bundle(root / "bundle", ALLOW, FORBID_PHI), root / "enc",
                       audience=AUDIENCE) as proc:
        yield proc


async def _until(check: Any, seconds: float = 10.0) -> None:
    """Wait for ``check()`` (state in another task of this loop, polled: nothing signals it)."""
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_handshake_era_agent_hears_updates_of_what_it_subscribed_to(enclave: EnclaveProcess) -> None:
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        uri = getattr(getattr(message, "params", None), "uri", None)
        if getattr(message, "method", "") == "notifications/resources/updated" and uri is not None:
            heard.append(str(uri))

    async with everything_stack(enclave) as (url, up), agent(url, token=None, mode="legacy",
                                                   message_handler=on_message) as client:
        await client.subscribe_resource(WATCHED)
        await _until(lambda: up.state.bus.listening == 1)  # the gateway listens upstream for it
        await up.state.touch(WATCHED)
        await _until(lambda: heard == [WATCHED])
        await client.unsubscribe_resource(WATCHED)
        await _until(lambda: up.state.bus.listening == 0)  # and stops listening
        await up.state.touch(WATCHED)
        await asyncio.sleep(0.3)
    assert heard == [WATCHED]



async def test_an_agent_that_leaves_subscribed_ends_the_gateways_listen(enclave: EnclaveProcess) -> None:
    """The agent goes without unsubscribing: its GET stream, and the listen upstream that fed it,
    end with it (the stream once looped on after its client left, holding the listen open)."""
    async with everything_stack(enclave) as (url, up):
        async with agent(url, token=None, mode="legacy") as client:
            await client.subscribe_resource(WATCHED)
            await _until(lambda: up.state.bus.listening == 1)
        await _until(lambda: up.state.bus.listening == 0)

async def test_a_2026_agent_listens_through_the_gateway(enclave: EnclaveProcess) -> None:
    async with (
        everything_stack(enclave) as (url, up),
        agent(url, token=None) as client,
        client.listen(resource_subscriptions=[WATCHED]) as subscription,
    ):
        await up.state.touch(WATCHED)
        async with asyncio.timeout(10):
            event = await anext(aiter(subscription))
    assert str(getattr(event, "uri", "")) == WATCHED


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_subscribing_to_what_the_policy_keeps_from_the_agent_is_refused(
    enclave: EnclaveProcess, mode: str
) -> None:
    async with everything_stack(enclave) as (url, up), agent(url, token=None, mode=mode) as client:
        with pytest.raises(MCPError) as refused:
            if mode == "legacy":
                await client.subscribe_resource(PATIENT_RECORD)
            else:
                async with client.listen(resource_subscriptions=[WATCHED, PATIENT_RECORD]):
                    pass
        data: Any = refused.value.error.data
        assert data["error_code"] == "POLICY_DENY"
        await asyncio.sleep(0.2)
        assert up.state.bus.listening == 0  # nothing listens upstream


async def test_the_get_stream_is_offered_once_per_session_and_only_to_sessions(
    enclave: EnclaveProcess,
) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"}}}
    async with everything_stack(enclave) as (url, _), httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url, headers=SSE_HEADERS)).status_code == 405  # no session
        opened = await http.post(url, json=hello, headers=SSE_HEADERS)
        session = {**SSE_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
        async with http.stream("GET", url, headers=session) as first:
            assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
            second = await http.get(url, headers=session)
            assert second.status_code == 409


async def test_the_guard_admits_a_listen_only_for_the_resources_its_permit_names(
    enclave: EnclaveProcess,
) -> None:
    """The host going around the gateway to the guarded upstream."""
    listen = {"notifications": {"resourceSubscriptions": [WATCHED]}}
    permit = await get_permit(enclave.address, "subscriptions", listen, method="subscriptions/listen")
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28",
               "mcp-method": "subscriptions/listen"}
    wider = {"notifications": {"resourceSubscriptions": [PATIENT_RECORD, WATCHED]}, "_meta": MODERN_META}
    async with run_everything(guard=make_guard([enclave], AUDIENCE)) as up, httpx.AsyncClient() as http:
        for extra, params in (({}, {**listen, "_meta": MODERN_META}),
                              ({"x-cmcp-permit": permit}, wider)):
            reply = await http.post(up.url, headers={**headers, **extra},
                                    json={"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen",
                                          "params": params})
            assert reply.status_code == 403
            code = reply.json()["error"]["data"]["error_code"]
            assert code == ("PERMIT_MISSING" if not extra else "PERMIT_ARGS_MISMATCH")
        assert up.state.bus.listening == 0
