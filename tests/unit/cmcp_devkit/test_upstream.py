"""cmcp_devkit.upstream: the counted MCP upstream, its profiles and its process main."""

from __future__ import annotations

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from cmcp_devkit.upstream import (
    BENCH_STREAM_PROGRESS,
    BENCH_STREAM_TOOL,
    BENCH_TOOL,
    DEMO_UNCATALOGUED_TOOL,
    PAYLOAD_BYTES,
    PROFILES,
    ConformanceTools,
    build_server,
    main,
    run_upstream,
)


async def _tool_names(profile: str, tools: ConformanceTools | None = None) -> set[str]:
    server, _ = build_server(profile, tools)
    return {t.name for t in await server.list_tools()}


def test_unknown_profile_is_refused_naming_the_profiles() -> None:
    with pytest.raises(ValueError, match="unknown upstream profile 'nope'") as info:
        build_server("nope")
    assert all(p in str(info.value) for p in PROFILES)


async def test_profiles_differ_in_their_tools() -> None:
    test, bench = await _tool_names("test"), await _tool_names("bench")
    assert {"echo", "add", "image", "fail", "payments.transfer"} <= test
    assert bench == test | {BENCH_TOOL, BENCH_STREAM_TOOL}
    demo = await _tool_names("demo")
    assert DEMO_UNCATALOGUED_TOOL in demo and DEMO_UNCATALOGUED_TOOL not in test


async def test_conformance_profile_takes_its_tool_names() -> None:
    defaults = ConformanceTools()
    names = await _tool_names("conformance")
    assert {defaults.allowed_tool, defaults.denied_tool, defaults.uncatalogued_tool,
            defaults.phi_tool, defaults.external_tool, defaults.non_ascii_tool} <= names
    renamed = await _tool_names("conformance", ConformanceTools(allowed_tool="say", denied_tool="drop"))
    assert {"say", "drop"} <= renamed and defaults.allowed_tool not in renamed


async def test_every_execution_is_counted_and_served_at_calls() -> None:
    async with run_upstream() as up:
        assert up.url.endswith("/mcp")
        async with Client(up.url, mode="legacy") as agent:
            echoed = await agent.call_tool("echo", {"text": "hi"})
            assert not echoed.is_error and "hi" in str(echoed.content)
            added = await agent.call_tool("add", {"a": 2, "b": 3})
            assert added.structured_content == {"total": 5}
            failed = await agent.call_tool("fail", {"reason": "because"})
            assert failed.is_error
        calls_url = up.url.removesuffix("/mcp") + "/calls"
        async with httpx.AsyncClient() as client:
            doc = (await client.get(calls_url)).json()
            assert doc == (await client.get(calls_url)).json()  # reading the counter runs no tool
    assert doc["by_tool"]["echo"] == 1 and doc["by_tool"]["add"] == 1
    assert doc["total"] == up.counter.total() == sum(doc["by_tool"].values())


async def test_bench_tool_returns_the_fixed_payload() -> None:
    async with run_upstream(profile="bench") as up, Client(up.url, mode="legacy") as agent:
        result = await agent.call_tool(BENCH_TOOL, {"seq": 1})
    text = result.content[0]
    assert getattr(text, "text", None) == "x" * PAYLOAD_BYTES
    assert up.counter.total() == 0  # deliberately uncounted: the benchmarks measure the gateway


async def test_bench_stream_reports_its_progress_then_returns_the_same_payload() -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    async with (run_upstream(profile="bench", json_response=False) as up,
                Client(up.url, mode="legacy") as agent):
        result = await agent.call_tool(BENCH_STREAM_TOOL, {"seq": 1}, progress_callback=on_progress)
    assert getattr(result.content[0], "text", None) == "x" * PAYLOAD_BYTES
    assert progress == [(step, BENCH_STREAM_PROGRESS) for step in range(1, BENCH_STREAM_PROGRESS + 1)]
    assert BENCH_STREAM_PROGRESS == 3 and up.counter.total() == 0


async def test_an_unknown_tool_executes_nothing() -> None:
    async with run_upstream() as up, Client(up.url, mode="legacy") as agent:
        try:
            result = await agent.call_tool("no_such_tool", {})
        except MCPError:
            pass
        else:
            assert result.is_error
    assert up.counter.total() == 0


def test_main_refuses_a_guard_without_a_pinned_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--guard-audience", "urn:x", "--guard-enclave", "127.0.0.1:1"])
    assert info.value.code == 2
    assert "--guard-audience needs --expected-bundle-hash" in capsys.readouterr().err


def test_main_refuses_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--profile", "nope"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
