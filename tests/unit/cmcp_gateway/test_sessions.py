"""The session table: the session limit, one implicit session per agent and route, idle reaping."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.pinning import Pin
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import SessionTable


class FakePool:
    """Pins every session to one enclave; closing returns a tiny Trust Record."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, str]] = []

    def pick(self, session_id: str) -> Pin:
        return Pin("127.0.0.1:50051", "k" * 43)  # a key id: session ids name their enclave by it

    async def close_session(self, pin: Pin, session_id: str, reason: str) -> Any:
        self.closed.append((session_id, reason))
        record = json.dumps({"session": session_id}).encode()
        return SimpleNamespace(trust_record_json=record, chain_tip="tip", entries=2)


def _route(name: str = "demo") -> RouteRuntime:
    config = RouteConfig(name=name, upstream="http://127.0.0.1:9/mcp", audience="a")
    return RouteRuntime(config, FakePool(), upstream=None)  # type: ignore[arg-type]


def test_the_table_refuses_past_its_limit() -> None:
    table, route = SessionTable(1, 60.0, None), _route()
    table.open(route, "alice", stateful=True)
    with pytest.raises(CmcpError) as raised:
        table.open(route, "alice", stateful=True)
    assert raised.value.code is Code.SESSION_LIMIT


def test_stateless_requests_share_one_implicit_session_per_agent_and_route() -> None:
    table, demo, other = SessionTable(10, 60.0, None), _route("demo"), _route("other")
    alice = table.implicit(demo, "alice")
    assert table.implicit(demo, "alice") is alice and not alice.stateful
    assert table.implicit(demo, "bob") is not alice
    assert table.implicit(other, "alice") is not alice
    table.forget(alice)
    assert alice.id not in table and table.implicit(demo, "alice") is not alice


async def test_idle_sessions_are_closed_and_their_records_kept(tmp_path: Path) -> None:
    table, route = SessionTable(10, 0.0, str(tmp_path)), _route()
    session = table.open(route, "alice", stateful=True)
    await table.reap_idle([route])
    assert table == {} and route.pool.closed == [(session.id, "idle")]  # type: ignore[attr-defined]
    assert json.loads((tmp_path / f"{session.id}.json").read_text()) == {"session": session.id}


def test_one_agents_flood_of_sessions_leaves_room_for_the_others() -> None:
    """The attacker is an agent with a valid token opening sessions as fast as it can: it hits
    its own limit, and every other agent still opens sessions."""
    table, route = SessionTable(100, 60.0, None, max_sessions_per_agent=10), _route()
    opened = 0
    with pytest.raises(CmcpError) as raised:
        for _ in range(1_000):
            table.open(route, "mallory", stateful=True)
            opened += 1
    assert raised.value.code is Code.SESSION_LIMIT and "this agent" in raised.value.detail
    assert opened == 10
    assert table.open(route, "alice", stateful=True).agent == "alice"
    mallory = next(s for s in table.values() if s.agent == "mallory")
    table.forget(mallory)  # a closed session frees its agent's slot
    assert table.open(route, "mallory", stateful=True).agent == "mallory"


def test_weakened_global_only_limit_lets_one_agent_lock_everyone_out() -> None:
    """Without the per-agent bound (the table's own total as the agent limit) the flood wins."""
    table, route = SessionTable(10, 60.0, None), _route()
    for _ in range(10):
        table.open(route, "mallory", stateful=True)
    with pytest.raises(CmcpError):
        table.open(route, "alice", stateful=True)
