"""The everything upstream: what it lists matches its documented names; SSE replay; the CLI."""

from __future__ import annotations

import subprocess
import sys

from mcp.types import JSONRPCNotification

from cmcp_devkit import everything
from cmcp_devkit.procs import READY_PREFIX


async def test_lists_are_the_documented_names() -> None:
    server, _, _ = everything.build_server()
    assert [t.name for t in await server.list_tools()] == list(everything.TOOLS)
    assert {str(r.uri) for r in await server.list_resources()} == set(everything.RESOURCES)
    templates = {t.uri_template for t in await server.list_resource_templates()}
    assert templates == set(everything.RESOURCE_TEMPLATES)
    assert {p.name for p in await server.list_prompts()} == set(everything.PROMPTS)
    schema = next(t for t in await server.list_tools() if t.name == everything.JSON_SCHEMA_2020_12_TOOL)
    assert schema.input_schema == everything.JSON_SCHEMA_2020_12_INPUT


async def test_the_sensitive_record_reads_as_phi_and_is_counted() -> None:
    server, counter, _ = everything.build_server()
    contents = list(await server.read_resource(everything.PATIENT_RECORD))
    assert '"mrn": "MRN-0042-7731"' in str(contents[0].content)
    templated = list(await server.read_resource("ehr://patients/p-0017/record"))
    assert '"patient_id": "p-0017"' in str(templated[0].content)
    assert counter[everything.PATIENT_RECORD] == 1 and counter[everything.PATIENT_RECORD_TEMPLATE] == 1
    assert set(everything.SENSITIVE_RESOURCES) == {
        everything.PATIENT_RECORD, everything.PATIENT_RECORD_TEMPLATE,
    }


async def test_event_store_replays_one_stream_after_an_id_and_skips_priming() -> None:
    store = everything.BoundedEventStore(limit=10)
    note = JSONRPCNotification(jsonrpc="2.0", method="notifications/message")
    first = await store.store_event("a", None)  # priming event
    await store.store_event("b", note)
    await store.store_event("a", note)
    await store.store_event("a", None)
    replayed: list[str] = []

    async def send(event: everything.EventMessage) -> None:
        replayed.append(event.event_id or "")

    assert await store.replay_events_after(first, send) == "a"
    assert replayed == ["3"]
    assert await store.replay_events_after("999", send) is None


def test_process_prints_ready_and_serves() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cmcp_devkit.everything", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == READY_PREFIX.strip() and line[1].endswith("/mcp") and line[2] == "everything"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) in (0, -15)  # uvicorn re-raises the SIGTERM it handled
