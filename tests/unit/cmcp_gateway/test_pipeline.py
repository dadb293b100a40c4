"""The gated call path against a real enclave and the SDK upstream behind its guard.

An allowed call is relayed verbatim; a denied one answers a coded error carrying the enclave's
signed decision and forwards nothing; an upstream refusal is relayed with its own code. Each
outcome is queued for the enclave, which the session's audit chain then records.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from cmcp_core.audit_store import chain_entries
from cmcp_core.decision import verify_decision
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.upstream import RunningUpstream, run_upstream
from cmcp_gateway import pipeline
from cmcp_gateway.audit_writer import AuditWriter
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.enclave_pool import EnclavePool
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import McpSession, SessionTable
from cmcp_gateway.upstream import UpstreamClient
from tests.helpers.gateway_stack import AUDIENCE, attest_policy, audit_writer, make_guard

TRANSFER = {"amount": 100, "currency": "EUR", "to": "acct-1"}


@dataclass
class Wired:
    runtime: RouteRuntime
    session: McpSession
    upstream: RunningUpstream


async def _wired(enclave: EnclaveProcess, guard_bundles: list[str]) -> AsyncIterator[Wired]:
    async with run_upstream(make_guard([enclave.address], AUDIENCE, bundle_hashes=guard_bundles)) as up:
        pool = EnclavePool("t", attest_policy(enclave.bundle_hash), 10.0, audit_writer())
        await pool.set_endpoints([enclave.address])
        route = RouteConfig(name="t", upstream=up.url, audience=AUDIENCE, enclaves=(enclave.address,),
                            expected_bundle_hashes=frozenset({enclave.bundle_hash}))
        runtime = RouteRuntime(route, pool, UpstreamClient(up.url, 10.0))
        session = await SessionTable(10, 60.0, None).open(runtime, "pipeline-agent", stateful=True)
        try:
            yield Wired(runtime, session, up)
        finally:
            await runtime.upstream.aclose()
            await pool.close()


@pytest.fixture
async def wired(enclave: EnclaveProcess) -> AsyncIterator[Wired]:
    async for w in _wired(enclave, [enclave.bundle_hash]):
        yield w


async def test_an_allowed_call_is_relayed_verbatim(wired: Wired) -> None:
    call = {"name": "payments.transfer", "arguments": TRANSFER}
    answer = await pipeline.call(wired.runtime, wired.session, 1, "tools/call", call)
    assert answer.result["structuredContent"] == {**TRANSFER, "status": "sent"}
    assert answer.events is None  # a JSON upstream: nothing to stream
    assert wired.upstream.counter["payments.transfer"] == 1


async def test_a_denied_call_carries_the_signed_decision_and_forwards_nothing(
    wired: Wired, enclave: EnclaveProcess
) -> None:
    over_limit = {**TRANSFER, "amount": 50_000}
    with pytest.raises(FailedRequest) as denied:
        await pipeline.call(wired.runtime, wired.session, 2, "tools/call", {"name": "payments.transfer",
                                                                   "arguments": over_limit})
    assert denied.value.code == "POLICY_DENY"
    error = json.loads(denied.value.response.body)["error"]
    signed = error["data"]["decision"]
    padded = signed["signature"] + "=" * (-len(signed["signature"]) % 4)
    doc = verify_decision(signed["document"].encode(), base64.urlsafe_b64decode(padded), enclave.public_key)
    assert doc["decision"] == "deny" and doc["call_id"] == error["data"]["call_id"]
    assert wired.upstream.counter.total() == 0


async def test_an_upstream_refusal_is_relayed_with_its_code(enclave: EnclaveProcess) -> None:
    """The guard in front of this upstream pins another bundle, so it refuses the genuine permit."""
    async for w in _wired(enclave, ["sha256:" + "0" * 64]):
        with pytest.raises(FailedRequest) as refused:
            call = {"name": "payments.transfer", "arguments": TRANSFER}
            await pipeline.call(w.runtime, w.session, 3, "tools/call", call)
        assert refused.value.code == "PERMIT_UNTRUSTED_KEY"
        assert w.upstream.counter.total() == 0


async def test_tools_list_is_filtered_by_the_enclave(wired: Wired) -> None:
    listed = await pipeline.list_tools(wired.runtime, wired.session)
    names = {t["name"] for t in listed["tools"]}
    assert "web.search" in names
    assert not names & {"add", "echo", "fail"}  # the upstream has them; the measured catalog does not


class DownStore:
    """An audit store that cannot write (disk full, database gone)."""

    def __init__(self) -> None:
        self.calls = 0

    def append(self, rows: object) -> int:
        self.calls += 1
        raise CmcpError(Code.AUDIT_STORE_UNAVAILABLE, "disk full")


async def test_a_call_whose_audit_entries_cannot_be_stored_is_not_forwarded(wired: Wired) -> None:
    """Fail closed: the decision's entry must be durable before its permit is used."""
    writer = wired.runtime.pool.audit
    healthy, writer.store = writer.store, DownStore()  # type: ignore[assignment]
    with pytest.raises(CmcpError) as refused:
        await pipeline.call(wired.runtime, wired.session, 3, "tools/call", {"name": "payments.transfer",
                                                                   "arguments": TRANSFER})
    assert refused.value.code is Code.AUDIT_STORE_UNAVAILABLE
    assert wired.upstream.counter.total() == 0 and writer.backlog  # kept for the next write
    writer.store = healthy
    await pipeline.call(wired.runtime, wired.session, 4, "tools/call",
                             {"name": "payments.transfer", "arguments": TRANSFER})
    stored = [json.loads(raw) for raw in chain_entries(healthy, wired.session.id)]
    assert [e["kind"] for e in stored] == ["open", "decision", "decision"]  # the refused one too
    assert not writer.backlog


async def test_weakened_writer_that_swallows_store_errors_forwards_an_unrecorded_call(
        wired: Wired, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches the hole: a gateway that ignores a failed write lets the call run
    with no durable trace of its decision."""
    writer = wired.runtime.pool.audit
    writer.store = DownStore()  # type: ignore[assignment]

    def swallowing(entries: Sequence[bytes]) -> asyncio.Future[None]:
        failing = AuditWriter.submit(writer, entries)
        swallowed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failing.add_done_callback(lambda done: (done.exception(), swallowed.set_result(None)))
        return swallowed

    monkeypatch.setattr(writer, "submit", swallowing)
    await pipeline.call(wired.runtime, wired.session, 5, "tools/call",
                             {"name": "payments.transfer", "arguments": TRANSFER})
    assert wired.upstream.counter["payments.transfer"] == 1  # forwarded, unrecorded


async def test_a_decision_is_not_cut_when_the_agent_leaves_the_stream_awaiting_it() -> None:
    """The front cancels a stream whose agent left; the decision it was awaiting runs to its end
    (cut mid-write, gRPC would cancel the enclave stream shared by every call), and an answer
    that arrives for nobody is closed."""
    written = asyncio.Event()
    closed = asyncio.Event()

    class Events:
        def __aiter__(self) -> Any:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

        async def aclose(self) -> None:
            closed.set()

    async def decide() -> pipeline.Answer:
        await asyncio.sleep(0.05)  # the write to the enclave's stream
        written.set()
        return pipeline.Answer(events=Events())  # type: ignore[arg-type]

    stream = asyncio.ensure_future(pipeline.unbroken(decide()))
    await asyncio.sleep(0.01)
    stream.cancel()  # the agent left
    with pytest.raises(asyncio.CancelledError):
        await stream
    await asyncio.wait_for(written.wait(), 2)
    await asyncio.wait_for(closed.wait(), 2)
