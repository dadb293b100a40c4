"""Fail closed: enclave killed, slow, lying, absent; upstream down; limits. Nothing is forwarded.

The hostile or broken enclaves are test-built gRPC servicers (``MitmEnclave``) in front of a
real enclave process, so attestation still verifies and only the decision path misbehaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from agentrust_trace import verify_record
from mcp.shared.exceptions import MCPError

from cmcp_core.audit_store_verify import verify_store
from cmcp_core.crypto import public_jwk
from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.ports import free_port
from cmcp_gateway import enclave_pool
from cmcp_gateway.auth import TokenStore
from cmcp_gateway.config import GatewayLimits, RouteConfig
from tests.helpers.gateway_stack import AUDIENCE, MitmEnclave, agent, gateway_config, run_gateway, run_stack
from tests.paths import ROOT

BUNDLE = ROOT / "examples/realistic"
OK_ARGS = {"query": "weather"}
ALICE = {"authorization": "Bearer tok-alice", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    with start_enclave(BUNDLE, tmp_path_factory.mktemp("enc"), audience=AUDIENCE) as proc:
        yield proc


@pytest.fixture
async def mitm(enclave: EnclaveProcess, request: pytest.FixtureRequest) -> AsyncIterator[MitmEnclave]:
    box = await MitmEnclave(enclave.address, tamper=request.param, delay=30.0).start()
    try:
        yield box
    finally:
        await box.stop()


def code_of(exc: pytest.ExceptionInfo[MCPError]) -> str:
    return str(exc.value.error.data["error_code"])


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_enclave_killed_mid_session(tmp_path: Path, mode: str) -> None:
    with start_enclave(BUNDLE, tmp_path, audience=AUDIENCE) as doomed:
        async with (
            run_stack([doomed], audience=AUDIENCE) as stack,
            agent(stack.url, mode=mode) as client,
        ):
            await client.call_tool("web.search", OK_ARGS)
            assert stack.upstream.counter.total() == 1
            pool = next(iter(stack.gateway.routes.values())).pool
            doomed.stop()
            # The gateway notices on its own: the decision stream to the enclave breaks.
            async with asyncio.timeout(10):
                while pool.attested():  # noqa: ASYNC110 - the pool offers no event to wait on
                    await asyncio.sleep(0.01)
            with pytest.raises(MCPError) as lost:  # never silently moved: its enclave is gone
                await client.call_tool("web.search", OK_ARGS)
            assert code_of(lost) == "SESSION_LOST"
            with pytest.raises(MCPError) as again:
                await client.call_tool("web.search", OK_ARGS)
            # a stateful session stays lost; a stateless agent starts over, with no enclave left
            assert code_of(again) == ("SESSION_LOST" if mode == "legacy" else "TEE_UNAVAILABLE")
            assert stack.upstream.counter.total() == 1


async def test_session_is_not_moved_to_another_enclave(tmp_path: Path) -> None:
    with (
        start_enclave(BUNDLE, tmp_path / "a", audience=AUDIENCE) as one,
        start_enclave(BUNDLE, tmp_path / "b", audience=AUDIENCE) as two,
    ):
        procs = {one.address: one, two.address: two}
        async with run_stack(list(procs.values()), audience=AUDIENCE) as stack:
            pool = next(iter(stack.gateway.routes.values())).pool
            async with agent(stack.url, mode="legacy") as client:
                await client.call_tool("web.search", OK_ARGS)
                session = next(iter(stack.gateway.sessions.values()))
                survivor = next(a for a in procs if a != session.pin.address)
                procs[session.pin.address].stop()
                await pool.refresh()  # the survivor stays attested; the session's enclave drops out
                assert [e.address for e in pool.attested()] == [survivor]
                with pytest.raises(MCPError) as lost:
                    await client.call_tool("web.search", OK_ARGS)
                assert code_of(lost) == "SESSION_LOST"
            assert stack.upstream.counter.total() == 1
            # a new session lands on the survivor and works
            async with agent(stack.url, mode="legacy") as fresh:
                await fresh.call_tool("web.search", OK_ARGS)
            assert stack.upstream.counter.total() == 2


@pytest.mark.parametrize("mitm", ["slow"], indirect=True)
async def test_enclave_slower_than_the_deadline(mitm: MitmEnclave, enclave: EnclaveProcess) -> None:
    limits = GatewayLimits(decide_timeout_seconds=0.3)
    async with (
        run_stack(
            [mitm.address], audience=AUDIENCE, guard_enclaves=[enclave], limits=limits
        ) as stack,
        agent(stack.url) as client,
    ):
        with pytest.raises(MCPError) as slow:
            await client.call_tool("web.search", OK_ARGS)
        assert code_of(slow) == "TEE_UNAVAILABLE"
        assert mitm.decide_seen.is_set() and mitm.hop_decides == 1  # held on the lean hop
        assert stack.upstream.counter.total() == 0


@pytest.mark.parametrize("mitm", ["bad-signature", "no-permit", "strip-audit"], indirect=True)
async def test_enclave_answer_that_does_not_verify(mitm: MitmEnclave, enclave: EnclaveProcess) -> None:
    async with run_stack([mitm.address], audience=AUDIENCE, guard_enclaves=[enclave]) as stack:
        async with agent(stack.url) as client:
            for _ in range(2):
                with pytest.raises(MCPError) as bad:
                    await client.call_tool("web.search", OK_ARGS)
                assert code_of(bad) == "DECISION_UNVERIFIED"
        assert stack.upstream.counter.total() == 0
    assert mitm.hop_decides == 2  # the lies came over the lean decision hop (ADR 0024)


@pytest.mark.parametrize("mitm", ["strip-audit"], indirect=True)
async def test_weakened_gateway_uses_a_permit_whose_decision_left_no_trace(
        mitm: MitmEnclave, enclave: EnclaveProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches the hole: a gateway that does not insist on the decision's own
    audit entry forwards a call the host kept out of the audit store."""
    monkeypatch.setattr(enclave_pool, "_check_carried", lambda resp: None)
    async with run_stack([mitm.address], audience=AUDIENCE, guard_enclaves=[enclave]) as stack:
        async with agent(stack.url) as client:
            await client.call_tool("web.search", OK_ARGS)
        assert stack.upstream.counter.total() == 1


@pytest.mark.parametrize("mitm", ["other-call"], indirect=True)
async def test_replayed_decision_for_another_call(mitm: MitmEnclave, enclave: EnclaveProcess) -> None:
    """A genuinely signed allow, replayed for a different call, is refused."""
    async with run_stack([mitm.address], audience=AUDIENCE, guard_enclaves=[enclave]) as stack:
        async with agent(stack.url) as client:
            await client.call_tool("web.search", OK_ARGS)  # the decision the host will replay
            with pytest.raises(MCPError) as replay:
                await client.call_tool("payments.transfer", {"amount": 50_000, "currency": "EUR", "to": "x"})
            assert code_of(replay) == "DECISION_UNVERIFIED"
        assert stack.upstream.counter.total() == 1
        assert stack.upstream.counter["payments.transfer"] == 0


async def test_no_enclave_at_all() -> None:
    dead = f"127.0.0.1:{free_port()}"
    pinned = ["sha256:" + "0" * 64]  # nothing answers there; what is pinned does not matter
    async with (
        run_stack([dead], audience=AUDIENCE, bundle_hashes=pinned) as stack,
        agent(stack.url) as client,
    ):
        with pytest.raises(MCPError) as none:
            await client.call_tool("web.search", OK_ARGS)
        assert code_of(none) == "TEE_UNAVAILABLE"
        assert stack.upstream.counter.total() == 0


async def test_upstream_down(enclave: EnclaveProcess) -> None:
    route = RouteConfig(
        name="t",
        upstream=f"http://127.0.0.1:{free_port()}/mcp",
        audience=AUDIENCE,
        enclaves=(enclave.address,),
        expected_bundle_hashes=frozenset({enclave.bundle_hash}),
    )
    config = gateway_config(route)
    async with run_gateway(config, TokenStore({"tok-alice": "alice"})) as gw, agent(gw.url) as client:
        with pytest.raises(MCPError) as down:
            await client.call_tool("web.search", OK_ARGS)
        assert code_of(down) == "UPSTREAM_UNAVAILABLE"


@pytest.mark.parametrize("mitm", ["slow"], indirect=True)
async def test_too_many_concurrent_per_agent(mitm: MitmEnclave, enclave: EnclaveProcess) -> None:
    limits = GatewayLimits(max_concurrent_per_agent=1, decide_timeout_seconds=5.0)
    async with run_stack(
        [mitm.address], audience=AUDIENCE, guard_enclaves=[enclave], limits=limits
    ) as stack:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "web.search", "arguments": OK_ARGS},
        }
        async with httpx.AsyncClient(timeout=30) as http:
            first = asyncio.create_task(http.post(stack.url, json=body, headers=ALICE))
            await asyncio.wait_for(mitm.decide_seen.wait(), 30)
            second = await http.post(stack.url, json=body, headers=ALICE)
            assert second.status_code == 429
            assert second.json()["error"]["data"]["error_code"] == "TOO_MANY_CONCURRENT"
            bob = await http.post(
                stack.url,
                json={**body, "method": "ping"},
                headers={**ALICE, "authorization": "Bearer tok-bob"},
            )
            assert bob.status_code == 200  # the limit is per agent
            first.cancel()
        assert stack.upstream.counter.total() == 0


async def test_limits_each_have_their_code(enclave: EnclaveProcess) -> None:
    limits = GatewayLimits(max_body_bytes=4096, max_depth=8, max_string=256)
    async with run_stack([enclave], audience=AUDIENCE, limits=limits) as stack:

        def call(arguments: object) -> bytes:
            return json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "web.search", "arguments": arguments},
                }
            ).encode()

        deep: object = "x"
        for _ in range(10):
            deep = [deep]
        cases = {
            "BODY_TOO_LARGE": (call({"query": "q" * 5000}), 413),
            "JSON_TOO_DEEP": (call({"query": deep}), 400),
            "STRING_TOO_LONG": (call({"query": "q" * 300}), 400),
        }
        async with httpx.AsyncClient() as http:
            for code, (body, status) in cases.items():
                resp = await http.post(stack.url, content=body, headers=ALICE)
                assert resp.status_code == status, (code, resp.text)
                assert resp.json()["error"]["data"]["error_code"] == code

            async def chunks() -> AsyncIterator[bytes]:  # no content-length: the streaming cap applies
                yield b"{" * 3000
                yield b"}" * 3000

            chunked = await http.post(stack.url, content=chunks(), headers=ALICE)
            assert chunked.json()["error"]["data"]["error_code"] == "BODY_TOO_LARGE"
        assert stack.upstream.counter.total() == 0


async def test_a_close_the_host_dropped_is_asked_again_and_the_record_kept(tmp_path: Path) -> None:
    """The host drops the agent's close: the agent is told the session ended (nothing runs in it
    again), and the gateway asks the enclave again on its next refresh, so the session still
    gets its Trust Record and its chain is whole in the store. (An enclave of its own: the
    store is checked whole, ledger included.)"""
    with start_enclave(BUNDLE, tmp_path / "enclave", audience=AUDIENCE) as enclave:
        mitm = await MitmEnclave(enclave.address, tamper="drop-close").start()
        try:
            async with run_stack([mitm.address], audience=AUDIENCE, guard_enclaves=[enclave]) as stack:
                stack.gateway.sessions.trust_record_dir = str(tmp_path)
                async with agent(stack.url, mode="legacy") as client:
                    await client.call_tool("web.search", OK_ARGS)
                    (session_id,) = stack.gateway.sessions
                assert mitm.closes_seen == 1 and stack.gateway.sessions.unclosed == [session_id]
                assert not (tmp_path / f"{session_id}.json").exists()
                for job in stack.gateway.refresher.jobs:  # a refresh: re-attest, then retry
                    await job()
                assert mitm.closes_seen == 2 and stack.gateway.sessions.unclosed == []
                record = json.loads((tmp_path / f"{session_id}.json").read_bytes())
                verify_record(record, public_jwk(enclave.public_key))
                findings = verify_store(stack.gateway.audit.store, {enclave.kid: enclave.public_key})
                assert [(f.chain, f.code) for f in findings if not f.ok] == []
                assert session_id in {f.chain for f in findings}
                assert stack.upstream.counter.total() == 1
        finally:
            await mitm.stop()


@pytest.mark.parametrize(("redeliver_seconds", "weakened"), [(1.0, False), (3600.0, True)])
async def test_a_decision_whose_answer_was_lost_is_still_stored(
        tmp_path: Path, redeliver_seconds: float, weakened: bool) -> None:
    """The host holds a Decide past the gateway's deadline: the call fails closed and nothing runs,
    but the enclave decided it, and its answer reaches a gateway that no longer waits for it. The
    enclave carries that decision's entry again once no acknowledgement came, so the store holds
    it and the closed session's chain verifies. The weakened enclave (it never carries an entry
    twice: redelivery after an hour) leaves a hole in the chain, which the offline check finds."""
    with start_enclave(BUNDLE, tmp_path, audience=AUDIENCE,
                       extra_args=["--audit-redeliver-seconds", str(redeliver_seconds)]) as enclave:
        box = await MitmEnclave(enclave.address, tamper="slow", delay=1.0).start()
        try:
            limits = GatewayLimits(decide_timeout_seconds=0.3)
            async with run_stack([box.address], audience=AUDIENCE, guard_enclaves=[enclave],
                                 limits=limits) as stack:
                async with agent(stack.url, mode="legacy") as client:
                    with pytest.raises(MCPError) as late:
                        await client.call_tool("web.search", OK_ARGS)
                    assert code_of(late) == "TEE_UNAVAILABLE"
                    (session_id,) = stack.gateway.sessions
                    await asyncio.sleep(3.0)  # the enclave decides at ~1 s; its delivery is overdue at ~2 s
                    for job in stack.gateway.refresher.jobs:  # one refresh: re-attest, DrainAudit
                        await job()
                store = stack.gateway.audit.store  # the agent's DELETE closed the session meanwhile
                kinds = [json.loads(raw)["kind"] for raw in store.entries(enclave.kid, session_id)]
                findings = {f.chain: f for f in verify_store(store, {enclave.kid: enclave.public_key})}
        finally:
            await box.stop()
    assert stack.upstream.counter.total() == 0
    if weakened:
        assert kinds == ["open", "close"] and not findings[session_id].ok
    else:
        assert kinds == ["open", "decision", "close"]
        assert [(chain, f.code) for chain, f in findings.items() if not f.ok] == []
