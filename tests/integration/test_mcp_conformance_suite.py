"""The official MCP conformance suite's server scenarios against the everything upstream, directly.

Issue 18 wants the suite's scenarios to pass through the gateway exactly as they pass against the
same upstream directly. This module is the direct half and the harness for the other one: a
*target* turns a running upstream into the URL the suite talks to (:func:`direct` is the upstream
itself); :func:`compare_with_direct` runs the suite directly and through a target, each on a fresh
upstream, and returns the scenarios whose outcome differs beyond a list of allowed differences
(scenario -> reason). A gateway in front of the same upstream is one more target;
:func:`test_comparison_names_what_a_front_breaks` shows the comparison on a known-broken one.

What the suite (``@modelcontextprotocol/conformance`` 0.1.16, pinned in
``devkit/cmcp_devkit/mcp_conformance/package-lock.json``) runs: with ``--spec-version
2025-11-25`` 32 server scenarios, with ``2025-06-18`` the 26 that version has (the filter selects
scenarios; the suite's TypeScript client negotiates its own latest protocol in both). Two of the
32 are in the suite's *pending* set (``json-schema-2020-12``, ``server-sse-polling``); they run here
too. All pass directly. One needs explaining: ``server-sse-polling`` sends its raw ``tools/call``
with ``mcp-protocol-version: 2025-03-26``, and a server must not send SSE priming events (which
make a stream resumable) to a client older than 2025-11-25, so the SDK answers on the open
stream: the scenario ends with no failure and two warnings (no priming event, no ``retry``
field) and never exercises the resume. :func:`test_sse_resumption_at_2025_11_25` does that resume
itself, at 2025-11-25, so the upstream is proven to support it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cmcp_devkit.everything import RETRY_INTERVAL_MS, RunningEverything, run_everything
from cmcp_devkit.mcp_conformance import (
    PENDING_SCENARIOS,
    SPEC_VERSIONS,
    Install,
    SuiteRun,
    differences,
    ensure_installed,
    run_suite,
)

# mcp 2.3 flags logging and sampling as deprecated from protocol 2026-07-28; the upstream serves them.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

SCENARIOS_2025_06_18 = (
    "server-initialize", "logging-set-level", "ping", "completion-complete", "tools-list",
    "tools-call-simple-text", "tools-call-image", "tools-call-audio", "tools-call-embedded-resource",
    "tools-call-mixed-content", "tools-call-with-logging", "tools-call-error", "tools-call-with-progress",
    "tools-call-sampling", "tools-call-elicitation", "resources-list", "resources-read-text",
    "resources-read-binary", "resources-templates-read", "resources-subscribe", "resources-unsubscribe",
    "prompts-list", "prompts-get-simple", "prompts-get-with-args", "prompts-get-embedded-resource",
    "prompts-get-with-image",
)
SCENARIOS: dict[str, frozenset[str]] = {
    "2025-06-18": frozenset(SCENARIOS_2025_06_18),
    "2025-11-25": frozenset(SCENARIOS_2025_06_18) | {
        "json-schema-2020-12", "elicitation-sep1034-defaults", "elicitation-sep1330-enums",
        "server-sse-polling", "server-sse-multiple-streams", "dns-rebinding-protection",
    },
}
# Warnings a direct run shows, by scenario (see the module docstring for server-sse-polling's).
EXPECTED_WARNINGS: dict[str, dict[str, frozenset[str]]] = {
    "2025-06-18": {},
    "2025-11-25": {"server-sse-polling": frozenset({"server-sse-priming-event", "server-sse-retry-field"})},
}

# What each scenario makes the upstream run (the counter proves the suite reached the upstream).
EXECUTED_BY: dict[str, tuple[str, ...]] = {
    "tools-call-sampling": ("test_sampling",),
    "tools-call-elicitation": ("test_elicitation",),
    "tools-call-with-progress": ("test_tool_with_progress",),
    "tools-call-with-logging": ("test_tool_with_logging",),
    "resources-templates-read": ("test://template/{id}/data",),
    "prompts-get-with-args": ("test_prompt_with_arguments",),
    "completion-complete": ("completion/complete",),
    "server-sse-polling": ("test_reconnection",),
    "elicitation-sep1330-enums": ("test_elicitation_sep1330_enums",),
}

Target = Callable[[RunningEverything], contextlib.AbstractAsyncContextManager[str]]


@contextlib.asynccontextmanager
async def direct(up: RunningEverything) -> AsyncIterator[str]:
    """The upstream itself. A gateway target starts a gateway routed to ``up.url`` and yields its URL."""
    yield up.url


@pytest.fixture(scope="module")
def install() -> Install:
    """The suite and Node 22 (npm ci into ~/.cache/cmcp-mcp-conformance once; seconds when warm)."""
    return ensure_installed()


async def run_against(
    install: Install, spec_version: str, target: Target = direct, **upstream: Any
) -> tuple[SuiteRun, RunningEverything]:
    """A fresh everything upstream, the suite against ``target`` in front of it: the run and upstream."""
    async with run_everything(**upstream) as up, target(up) as url:
        return await run_suite(url, spec_version, install=install), up


async def compare_with_direct(
    install: Install, spec_version: str, target: Target, allowed: dict[str, str] | None = None,
    **upstream: Any,
) -> tuple[dict[str, str], SuiteRun, SuiteRun]:
    """The suite directly and through ``target`` (each on a fresh upstream with ``upstream`` options):
    the scenarios whose outcome differs, beyond ``allowed`` (scenario -> why), and both runs.

    The gateway's test is ``assert (await compare_with_direct(install, v, through_gateway,
    ALLOWED))[0] == {}`` for each spec version."""
    reference, _ = await run_against(install, spec_version, direct, **upstream)
    other, _ = await run_against(install, spec_version, target, **upstream)
    return differences(reference, other, allowed), reference, other


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_suite_passes_directly(install: Install, spec_version: str) -> None:
    run, up = await run_against(install, spec_version)
    print(run.table())  # the per-scenario table, with -s
    assert set(run.results) == SCENARIOS[spec_version], run.table()
    assert not run.failed, run.table()
    assert run.returncode == 0, run.output[-3000:]
    assert {n for n, r in run.results.items() if r.pending} == PENDING_SCENARIOS & SCENARIOS[spec_version]
    warnings = {n: frozenset(c.id for c in r.warnings) for n, r in run.results.items() if r.warnings}
    assert warnings == EXPECTED_WARNINGS[spec_version], run.table()
    for scenario, executed in EXECUTED_BY.items():
        if scenario in run.results:
            assert all(up.counter[name] >= 1 for name in executed), (scenario, dict(up.counter))
    # resources-subscribe and -unsubscribe leave nothing subscribed; logging/setLevel was heard
    assert up.state.subscriptions == set()
    assert up.state.log_level is not None


@contextlib.asynccontextmanager
async def json_only_front(up: RunningEverything) -> AsyncIterator[str]:
    """A stand-in for a broken front: the same server answering every POST with one JSON body,
    so nothing the server sends during a call (requests, notifications) reaches the client."""
    async with run_everything(json_response=True) as twin:
        yield twin.url


# What a front that loses the per-call back-channel breaks (and nothing else).
BACK_CHANNEL_SCENARIOS = frozenset({
    "tools-call-with-logging", "tools-call-with-progress", "tools-call-sampling", "tools-call-elicitation",
})
BACK_CHANNEL_SCENARIOS_2025_11_25 = BACK_CHANNEL_SCENARIOS | {
    "elicitation-sep1034-defaults", "elicitation-sep1330-enums",
}


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_comparison_names_what_a_front_breaks(install: Install, spec_version: str) -> None:
    """The harness the gateway's test uses, on a known-broken target: the differences it reports
    are exactly the scenarios that need server-to-client messages during a call; listing one as
    allowed removes it, and an allowed difference that does not occur is reported as stale."""
    found, reference, other = await compare_with_direct(install, spec_version, json_only_front)
    expected = BACK_CHANNEL_SCENARIOS_2025_11_25 if spec_version == "2025-11-25" else BACK_CHANNEL_SCENARIOS
    assert set(found) == expected, other.table()
    assert all(text.startswith("passed -> failed: ") for text in found.values()), found
    allowed = dict.fromkeys(expected, "the stand-in answers in JSON") | {"ping": "stale entry"}
    assert set(differences(reference, other, allowed)) == {"ping"}
    assert differences(reference, reference) == {}


def _sse_events(body: str) -> list[dict[str, str]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = fields.get(key, "") + value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


async def test_sse_resumption_at_2025_11_25() -> None:
    """SEP-1699 as server-sse-polling means it, at a version that allows it: the POST stream opens
    with a priming event (id, empty data, ``retry``), test_reconnection closes it before the result,
    and a GET with ``Last-Event-ID`` delivers the result."""
    version = "2025-11-25"
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with run_everything() as up, httpx.AsyncClient(timeout=10) as http:
        init = await http.post(up.url, headers=headers, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {},
                       "clientInfo": {"name": "resume-test", "version": "1"}},
        })
        assert init.status_code == 200, init.text
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": version}
        await http.post(up.url, headers={**headers, **session},
                        json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = await http.post(up.url, headers={**headers, **session}, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "test_reconnection", "arguments": {}},
        })
        events = _sse_events(call.text)
        assert events[0]["data"] == "" and events[0]["id"] and events[0]["retry"] == str(RETRY_INTERVAL_MS)
        assert _result(call.text, 1) is None, events  # closed before the result
        resume = {"Accept": "text/event-stream", **session, "last-event-id": events[-1]["id"]}
        received = ""
        async with http.stream("GET", up.url, headers=resume) as resumed:
            assert resumed.status_code == 200
            async for chunk in resumed.aiter_text():  # read until the result: the stream may stay open
                received += chunk
                if _result(received, 1) is not None:
                    break
        result = _result(received, 1)
        assert result is not None, received
        assert result["content"][0]["text"] == "Reconnection test completed"


def _result(stream: str, request_id: int) -> dict[str, Any] | None:
    """The JSON-RPC result for ``request_id`` among the complete SSE events of ``stream``, if any."""
    stream = stream.replace("\r\n", "\n")
    complete = stream[: stream.rfind("\n\n") + 2] if "\n\n" in stream else ""
    for event in _sse_events(complete):
        with contextlib.suppress(ValueError):
            message = json.loads(event.get("data") or "null")
            if isinstance(message, dict) and message.get("id") == request_id and "result" in message:
                return dict(message["result"])
    return None
