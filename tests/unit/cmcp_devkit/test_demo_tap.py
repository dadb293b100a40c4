"""The demo's wiretap: a transparent relay that copies every permit it sees with its call.

The relay runs in this event loop in front of a real ``mcp`` SDK upstream (the dev kit's ``test``
profile), so what it forwards and returns is real MCP traffic; the permit header is what the
gateway would attach (this upstream has no guard, so it ignores it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cmcp_core.permit import PERMIT_HEADER
from cmcp_devkit import demo_tap
from cmcp_devkit.ports import free_port
from cmcp_devkit.serving import server_config, serving
from cmcp_devkit.upstream import CallCounter, run_upstream

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": "2025-06-18"}


def _rpc(method: str, params: dict[str, Any] | None = None, rid: int | None = 1) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    if rid is not None:
        body["id"] = rid
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_rpc("tools/call", {"name": "echo", "arguments": {"text": "hi"}}), ("echo", {"text": "hi"})),
        (_rpc("tools/call", {"name": "echo"}), ("echo", {})),
        (_rpc("tools/call", {"name": "echo", "arguments": ["not", "a", "dict"]}), ("echo", {})),
        (_rpc("tools/call", None), ("", {})),
        (_rpc("tools/call", {"arguments": {"a": 1}}), ("", {"a": 1})),
        (_rpc("tools/list", {}), None),
        (_rpc("notifications/initialized", rid=None), None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_call_of_recognises_only_tool_calls(body: bytes, expected: tuple[str, dict[str, Any]] | None) -> None:
    assert demo_tap._call_of(body) == expected


@dataclass
class Wire:
    tap: str
    upstream: str
    counter: CallCounter


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    async with run_upstream(profile="test") as up:
        base = up.url.rsplit("/mcp", 1)[0]
        port = free_port()
        async with serving(server_config(demo_tap.build_app(base), "127.0.0.1", port)):
            yield Wire(f"http://127.0.0.1:{port}", base, up.counter)


async def _session(client: httpx.AsyncClient, tap: str) -> str:
    init = await client.post(f"{tap}/mcp", headers=HEADERS, content=_rpc("initialize", {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
    assert init.status_code == 200, init.text
    sid = init.headers["mcp-session-id"]
    done = await client.post(f"{tap}/mcp", headers={**HEADERS, "mcp-session-id": sid},
                             content=_rpc("notifications/initialized", rid=None))
    assert done.status_code == 202
    return sid


async def test_relays_mcp_and_records_permits_with_their_calls(wire: Wire) -> None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        sid = await _session(client, wire.tap)
        headers = {**HEADERS, "mcp-session-id": sid}
        call = _rpc("tools/call", {"name": "echo", "arguments": {"text": "Zoë"}}, rid=7)
        permitted = {**headers, PERMIT_HEADER: "permit-1"}
        resp = await client.post(f"{wire.tap}/mcp", headers=permitted, content=call)
        assert resp.status_code == 200
        assert resp.json()["id"] == 7 and "Zoë" in json.dumps(resp.json()["result"], ensure_ascii=False)
        assert wire.counter["echo"] == 1, "the relay forwarded the call to the real upstream"
        # no permit header: relayed, not recorded; a permit on a non-call: not recorded either
        await client.post(f"{wire.tap}/mcp", headers=headers, content=_rpc("tools/call", {
            "name": "echo", "arguments": {"text": "again"}}, rid=8))
        await client.post(f"{wire.tap}/mcp", headers={**headers, PERMIT_HEADER: "permit-2"},
                          content=_rpc("tools/list", {}, rid=9))
        captured = (await client.get(f"{wire.tap}{demo_tap.CAPTURE_PATH}")).json()
    assert captured == [{"permit": "permit-1", "tool": "echo", "arguments": {"text": "Zoë"}}]
    assert wire.counter["echo"] == 2


async def test_relay_keeps_status_path_and_query(wire: Wire) -> None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        counted = await client.get(f"{wire.tap}/calls?x=1", headers={"connection": "keep-alive"})
        direct = await client.get(f"{wire.upstream}/calls?x=1")
        missing = await client.get(f"{wire.tap}/no-such-path")
    assert counted.status_code == 200 and counted.json() == direct.json()
    assert missing.status_code == 404
    assert "content-encoding" not in counted.headers


async def test_an_unreachable_upstream_is_a_502_and_the_permit_is_still_copied() -> None:
    port = free_port()
    app = demo_tap.build_app("http://127.0.0.1:9")  # nothing listens on the discard port
    call = _rpc("tools/call", {"name": "ehr.read_patient_record", "arguments": {"patient_id": "P-77"}})
    async with serving(server_config(app, "127.0.0.1", port)), httpx.AsyncClient(timeout=10.0) as client:
        resp = await client.post(f"http://127.0.0.1:{port}/mcp", content=call,
                                 headers={**HEADERS, PERMIT_HEADER: "copied"})
        captured = (await client.get(f"http://127.0.0.1:{port}{demo_tap.CAPTURE_PATH}")).json()
    assert resp.status_code == 502 and resp.text.startswith("tap: upstream unreachable: ")
    assert captured == [{"permit": "copied", "tool": "ehr.read_patient_record",
                         "arguments": {"patient_id": "P-77"}}]


def test_main_requires_forward(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        demo_tap.main([])
    assert caught.value.code == 2
    assert "the following arguments are required: --forward" in capsys.readouterr().err


def test_main_help_names_the_capture_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        demo_tap.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cmcp-demo-tap") and demo_tap.CAPTURE_PATH in out
