"""The session table: ids from the enclave, the session limit, one implicit session per agent and
route, idle reaping, closes asked again until the record is kept."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cmcp_core import session_id as session_ids
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import read_gpu_evidence_file
from cmcp_core.proto import enclave_pb2
from cmcp_gateway import sessions as sessions_module
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.pinning import Pin
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import SessionTable

KID = "k" * 43


class FakePool:
    """Pins every session to one enclave, which mints its ids; closing returns a tiny Trust Record."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, str]] = []
        self.opened: list[str] = []
        self.refuse: CmcpError | None = None
        self.gate: asyncio.Event | None = None  # when set, opens wait for it
        self.gpu_evidence: list[bytes] = []  # what an enclave beside GPUs returns with the record
        self.close_failures: list[CmcpError] = []  # what the next closes fail with, in turn

    async def pick(self, key: str) -> Pin:
        return Pin("127.0.0.1:50051", KID)

    async def open_session(self, pin: Pin, agent: str, access_token: str = "") -> str:
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse is not None:
            raise self.refuse
        self.opened.append(agent)
        return session_ids.mint(pin.kid)

    async def close_session(self, pin: Pin, session_id: str, reason: str) -> Any:
        self.closed.append((session_id, reason))
        if self.close_failures:
            raise self.close_failures.pop(0)
        record = json.dumps({"session": session_id}).encode()
        return enclave_pb2.CloseSessionResponse(trust_record_json=record, chain_tip="tip", entries=2,
                                                gpu_evidence=self.gpu_evidence)


def _route(name: str = "demo") -> RouteRuntime:
    config = RouteConfig(name=name, upstream="http://127.0.0.1:9/mcp", audience="a")
    return RouteRuntime(config, FakePool(), upstream=None)  # type: ignore[arg-type]


async def test_the_table_refuses_past_its_limit() -> None:
    table, route = SessionTable(1, 60.0, None), _route()
    await table.open(route, "alice", stateful=True)
    with pytest.raises(CmcpError) as raised:
        await table.open(route, "alice", stateful=True)
    assert raised.value.code is Code.SESSION_LIMIT


async def test_stateless_requests_share_one_implicit_session_per_agent_and_route() -> None:
    table, demo, other = SessionTable(10, 60.0, None), _route("demo"), _route("other")
    alice = await table.implicit(demo, "alice")
    assert await table.implicit(demo, "alice") is alice and not alice.stateful
    assert await table.implicit(demo, "bob") is not alice
    assert await table.implicit(other, "alice") is not alice
    table.forget(alice)
    assert alice.id not in table and await table.implicit(demo, "alice") is not alice


async def test_idle_sessions_are_closed_and_their_records_kept(tmp_path: Path) -> None:
    table, route = SessionTable(10, 0.0, str(tmp_path)), _route()
    session = await table.open(route, "alice", stateful=True)
    await table.reap_idle([route])
    assert table == {} and route.pool.closed == [(session.id, "idle")]  # type: ignore[attr-defined]
    assert json.loads((tmp_path / f"{session.id}.json").read_text()) == {"session": session.id}
    assert not (tmp_path / f"{session.id}.gpu-evidence.json").exists()  # no GPU, no side file


async def test_a_records_gpu_evidence_is_written_beside_it(tmp_path: Path) -> None:
    """The envelopes the record names, byte for byte, in the file `verify record --gpu-evidence`
    (and `--response`'s reader) takes: its digests must still match the record's references."""
    table, route = SessionTable(10, 60.0, str(tmp_path)), _route()
    envelopes = [b'{"format": "cmcp-gpu-evidence-v1", "n": 0}', bytes(range(256))]
    route.pool.gpu_evidence = envelopes  # type: ignore[attr-defined]
    session = await table.open(route, "alice", stateful=True)
    closed = await table.close(route, session, "done")
    side = tmp_path / f"{session.id}.gpu-evidence.json"
    assert read_gpu_evidence_file(side.read_bytes()) == tuple(envelopes)
    # the DELETE answer carries them too: a client that saved it holds the same --gpu-evidence file
    assert read_gpu_evidence_file(orjson.dumps(closed)) == tuple(envelopes)


async def test_a_record_without_gpus_is_answered_without_gpu_evidence() -> None:
    table, route = SessionTable(10, 60.0, None), _route()
    closed = await table.close(route, await table.open(route, "alice", stateful=True), "done")
    assert closed is not None and set(closed) == {"session_id", "chain_tip", "entries", "trust_record"}


async def test_one_agents_flood_of_sessions_leaves_room_for_the_others() -> None:
    """The attacker is an agent with a valid token opening sessions as fast as it can: it hits
    its own limit, and every other agent still opens sessions."""
    table, route = SessionTable(100, 60.0, None, max_sessions_per_agent=10), _route()
    opened = 0
    with pytest.raises(CmcpError) as raised:
        for _ in range(1_000):
            await table.open(route, "mallory", stateful=True)
            opened += 1
    assert raised.value.code is Code.SESSION_LIMIT and "this agent" in raised.value.detail
    assert opened == 10
    assert (await table.open(route, "alice", stateful=True)).agent == "alice"
    mallory = next(s for s in table.values() if s.agent == "mallory")
    table.forget(mallory)  # a closed session frees its agent's slot
    assert (await table.open(route, "mallory", stateful=True)).agent == "mallory"


async def test_weakened_global_only_limit_lets_one_agent_lock_everyone_out() -> None:
    """Without the per-agent bound (the table's own total as the agent limit) the flood wins."""
    table, route = SessionTable(10, 60.0, None), _route()
    for _ in range(10):
        await table.open(route, "mallory", stateful=True)
    with pytest.raises(CmcpError):
        await table.open(route, "alice", stateful=True)


async def test_the_session_id_is_the_one_the_enclave_minted() -> None:
    table, route = SessionTable(10, 60.0, None), _route()
    session = await table.open(route, "alice", stateful=True)
    assert session_ids.owned_by(session.id, KID) and route.pool.opened == ["alice"]  # type: ignore[attr-defined]
    assert table.find(session.id) is session


async def test_an_open_the_enclave_refuses_takes_no_slot() -> None:
    table, route = SessionTable(10, 60.0, None, max_sessions_per_agent=1), _route()
    route.pool.refuse = CmcpError(Code.AUDIT_STORE_UNAVAILABLE, "store down")  # type: ignore[attr-defined]
    with pytest.raises(CmcpError) as raised:
        await table.open(route, "alice", stateful=True)
    assert raised.value.code is Code.AUDIT_STORE_UNAVAILABLE and len(table) == 0
    route.pool.refuse = None  # type: ignore[attr-defined]
    assert (await table.open(route, "alice", stateful=True)).agent == "alice"


async def test_concurrent_opens_cannot_overshoot_the_agent_limit() -> None:
    """The flood arrives at once: slots are taken before the enclave answers."""
    table, route = SessionTable(100, 60.0, None, max_sessions_per_agent=3), _route()
    route.pool.gate = asyncio.Event()  # type: ignore[attr-defined]
    tasks = [asyncio.ensure_future(table.open(route, "mallory", stateful=True)) for _ in range(10)]
    await asyncio.sleep(0)
    route.pool.gate.set()  # type: ignore[attr-defined]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3
    assert all(r.code is Code.SESSION_LIMIT for r in results if isinstance(r, CmcpError))


async def test_concurrent_stateless_requests_share_the_implicit_session_under_way() -> None:
    table, route = SessionTable(10, 60.0, None), _route()
    route.pool.gate = asyncio.Event()  # type: ignore[attr-defined]
    tasks = [asyncio.ensure_future(table.implicit(route, "alice")) for _ in range(5)]
    await asyncio.sleep(0)
    route.pool.gate.set()  # type: ignore[attr-defined]
    sessions = await asyncio.gather(*tasks)
    assert len({s.id for s in sessions}) == 1 and route.pool.opened == ["alice"]  # type: ignore[attr-defined]


async def test_a_failed_close_is_asked_again_until_the_record_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An enclave that did not answer a close (unreachable, a GPU that could not attest): the
    gateway asks again on each refresh, so the session still gets its Trust Record."""
    table, route = SessionTable(10, 60.0, str(tmp_path)), _route()
    pool: FakePool = route.pool  # type: ignore[assignment]
    pool.close_failures = [CmcpError(Code.TEE_UNAVAILABLE, "enclave unreachable"),
                           CmcpError(Code.GPU_EVIDENCE_MISSING, "GPU 0 did not answer")]
    session = await table.open(route, "alice", stateful=True)
    assert await table.close(route, session, "client closed") is None
    assert table.unclosed == [session.id] and session.id not in table
    await table.retry_closes([route])
    assert table.unclosed == [session.id] and not (tmp_path / f"{session.id}.json").exists()
    await table.retry_closes([route])
    assert table.unclosed == []
    assert json.loads((tmp_path / f"{session.id}.json").read_text()) == {"session": session.id}
    assert pool.closed == [(session.id, "client closed")] * 3  # the first reason, every time
    await table.retry_closes([route])
    assert len(pool.closed) == 3  # asked no more once kept
    assert "session left without a Trust Record" not in caplog.text


async def test_a_close_the_enclave_cannot_know_is_given_up_at_once(caplog: pytest.LogCaptureFixture) -> None:
    table, route = SessionTable(10, 60.0, None), _route()
    route.pool.close_failures = [CmcpError(Code.SESSION_UNKNOWN, "no such session")]  # type: ignore[attr-defined]
    session = await table.open(route, "alice", stateful=True)
    with caplog.at_level(logging.ERROR, logger="cmcp.gateway"):
        await table.close(route, session, "done")
    assert table.unclosed == []
    (given_up,) = [r for r in caplog.records if r.getMessage() == "session left without a Trust Record"]
    assert given_up.__dict__["session_id"] == session.id and given_up.__dict__["code"] == "SESSION_UNKNOWN"


async def test_failed_closes_are_given_up_after_the_window_or_past_the_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    table, route = SessionTable(2, 60.0, None), _route()
    pool: FakePool = route.pool  # type: ignore[assignment]
    sessions = [await table.open(route, "alice", stateful=True) for _ in range(2)]
    for session in sessions:
        table.forget(session)  # room for a third while two closes are kept
    third = await table.open(route, "bob", stateful=True)
    pool.close_failures = [CmcpError(Code.TEE_UNAVAILABLE, "down")] * 3
    for session in [*sessions, third]:
        await table.close(route, session, "done")
    assert table.unclosed == [sessions[1].id, third.id]  # bounded: the oldest was given up
    now = time.monotonic()
    monkeypatch.setattr(sessions_module.time, "monotonic", lambda: now + sessions_module.CLOSE_RETRY_SECONDS)
    pool.close_failures = [CmcpError(Code.TEE_UNAVAILABLE, "still down")] * 2
    with caplog.at_level(logging.ERROR, logger="cmcp.gateway"):
        await table.retry_closes([route])
    assert table.unclosed == []
    given_up = [r.__dict__["session_id"] for r in caplog.records
                if r.getMessage() == "session left without a Trust Record"]
    assert given_up == [sessions[0].id, sessions[1].id, third.id]


async def test_closes_still_failing_when_the_gateway_stops_are_logged_as_errors(
    caplog: pytest.LogCaptureFixture
) -> None:
    table, route = SessionTable(10, 60.0, None), _route()
    route.pool.close_failures = [CmcpError(Code.TEE_UNAVAILABLE, "down")]  # type: ignore[attr-defined]
    session = await table.open(route, "alice", stateful=True)
    await table.close(route, session, "done")
    with caplog.at_level(logging.ERROR, logger="cmcp.gateway"):
        table.give_up_closes()
    assert table.unclosed == []
    assert [r.__dict__["session_id"] for r in caplog.records
            if r.getMessage() == "session left without a Trust Record"] == [session.id]


async def test_a_close_whose_route_is_gone_is_given_up(caplog: pytest.LogCaptureFixture) -> None:
    table, route = SessionTable(10, 60.0, None), _route()
    route.pool.close_failures = [CmcpError(Code.TEE_UNAVAILABLE, "down")]  # type: ignore[attr-defined]
    session = await table.open(route, "alice", stateful=True)
    await table.close(route, session, "done")
    with caplog.at_level(logging.ERROR, logger="cmcp.gateway"):
        await table.retry_closes([])  # the route was removed from the configuration
    assert table.unclosed == []
    assert [r.__dict__["session_id"] for r in caplog.records
            if r.getMessage() == "session left without a Trust Record"] == [session.id]
