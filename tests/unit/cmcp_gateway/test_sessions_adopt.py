"""Adoption: a gateway replica serves a session another replica opened, at the enclave its id
names, only when that enclave says it is open and this agent's; and every session of a principal,
on every replica, lands on the principal's enclave."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_core.session_id import mint
from cmcp_gateway import pinning
from cmcp_gateway.config import RouteConfig
from cmcp_gateway.pinning import Pin
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import McpSession, SessionTable
from tests.helpers.session_pool import ENCLAVES, FakePool


def _route(pool: FakePool) -> RouteRuntime:
    config = RouteConfig(name="demo", upstream="http://127.0.0.1:9/mcp", audience="a")
    return RouteRuntime(config, pool, upstream=None)  # type: ignore[arg-type]


def _pool(route: RouteRuntime) -> FakePool:
    pool = route.pool
    assert isinstance(pool, FakePool)
    return pool


async def _settled(value: Any) -> Any:
    """``value``, awaited if the table's method was a coroutine (open/implicit become async when
    the enclave mints the id): these tests hold for either."""
    return await value if inspect.isawaitable(value) else value


async def _opened(table: SessionTable, route: RouteRuntime, agent: str) -> McpSession:
    """A stateful session opened on ``table`` (a replica), and held by its enclave."""
    session: McpSession = await _settled(table.open(route, agent, stateful=True))
    return _pool(route).opened(session)


# --- one enclave per principal ------------------------------------------------------------


async def test_every_session_of_a_principal_lands_on_its_enclave_and_its_id_says_which() -> None:
    """Many sessions, implicit or not, on several replicas: one enclave per principal, so no new
    session, connection or replica starts the principal's state anywhere else."""
    route = _route(FakePool(ENCLAVES))
    replicas = [SessionTable(100, 60.0, None), SessionTable(100, 60.0, None)]
    pins = {(await _opened(t, route, "alice")).pin for t in replicas for _ in range(20)}
    pins |= {(await _settled(t.implicit(route, "alice"))).pin for t in replicas}
    assert pins == {pinning.pick("alice", ENCLAVES, "demo")}
    for session in replicas[0].values():
        assert pinning.owner(session.id, "bob", ENCLAVES) == session.pin  # the id names its enclave


def test_weakened_pinning_by_session_id_spreads_one_principal_over_enclaves() -> None:
    """The weakening this guards against: the old key (the session id) scatters one agent's
    sessions, so a new session would start clean on another enclave."""
    pins = {pinning.pick(mint(ENCLAVES[0].kid), ENCLAVES, "demo") for _ in range(40)}
    assert len(pins) > 1


# --- adoption: a session this replica never saw --------------------------------------------


async def test_a_session_opened_on_another_replica_is_adopted_at_its_enclave() -> None:
    pool = FakePool(ENCLAVES)
    route, here, there = _route(pool), SessionTable(10, 60.0, None), SessionTable(10, 60.0, None)
    opened = await _opened(there, route, "alice")
    adopted = await here.adopt(route, opened.id, "alice")
    assert (adopted.id, adopted.agent, adopted.pin) == (opened.id, "alice", opened.pin) and adopted.stateful
    assert here.find(opened.id) is adopted and pool.asked == [(opened.pin, opened.id)]


@pytest.mark.parametrize(
    ("who", "closed", "code"),
    [("mallory", False, Code.SESSION_PRINCIPAL_MISMATCH), ("alice", True, Code.SESSION_CLOSED)],
)
async def test_the_enclave_judges_an_adoption(who: str, closed: bool, code: Code) -> None:
    """Mallory learnt Alice's session id: the id alone is not enough, the enclave says whose it is."""
    pool = FakePool(ENCLAVES)
    route, here, there = _route(pool), SessionTable(10, 60.0, None), SessionTable(10, 60.0, None)
    opened = await _opened(there, route, "alice")
    if closed:
        await there.close(route, opened, "client closed")
    with pytest.raises(CmcpError) as raised:
        await here.adopt(route, opened.id, who)
    assert raised.value.code is code and here == {}


async def test_an_id_no_enclave_minted_is_unknown() -> None:
    pool = FakePool(ENCLAVES)
    route, table = _route(pool), SessionTable(10, 60.0, None)
    for forged in (mint(ENCLAVES[1].kid), "0" * 32):
        with pytest.raises(CmcpError) as raised:
            await table.adopt(route, forged, "alice")
        assert raised.value.code is Code.SESSION_UNKNOWN
    assert table == {}


async def test_a_session_whose_enclave_is_gone_is_lost_and_no_other_enclave_is_asked() -> None:
    pool = FakePool(ENCLAVES)
    route, here, there = _route(pool), SessionTable(10, 60.0, None), SessionTable(10, 60.0, None)
    opened = await _opened(there, route, "alice")
    pool.enclaves.remove(opened.pin)
    with pytest.raises(CmcpError) as raised:
        await here.adopt(route, opened.id, "alice")
    assert raised.value.code is Code.SESSION_LOST and pool.asked == [] and here == {}


async def test_weakened_adoption_on_the_id_alone_gives_mallory_alices_session() -> None:
    """Without the enclave's judgement (the probe monkeypatched away) Mallory's adoption succeeds:
    the tests above would catch a gateway that trusts the id."""
    pool = FakePool(ENCLAVES)
    route, here, there = _route(pool), SessionTable(10, 60.0, None), SessionTable(10, 60.0, None)
    opened = await _opened(there, route, "alice")

    async def trusting(pin: Pin, session_id: str, principal: str, _token: str = "") -> list[str]:
        return []

    pool.list_tools = trusting  # type: ignore[method-assign]
    assert (await here.adopt(route, opened.id, "mallory")).agent == "mallory"


async def test_adopted_sessions_count_against_the_agents_limit() -> None:
    pool = FakePool(ENCLAVES)
    route = _route(pool)
    here, there = SessionTable(100, 60.0, None, max_sessions_per_agent=2), SessionTable(100, 60.0, None)
    ids = [(await _opened(there, route, "mallory")).id for _ in range(3)]
    await here.adopt(route, ids[0], "mallory")
    await _opened(here, route, "mallory")
    with pytest.raises(CmcpError) as raised:
        await here.adopt(route, ids[1], "mallory")
    assert raised.value.code is Code.SESSION_LIMIT and ids[1] not in here
    alice = await _opened(there, route, "alice")
    assert (await here.adopt(route, alice.id, "alice")).agent == "alice"  # others unaffected


async def test_a_session_adopted_twice_has_one_entry() -> None:
    pool = FakePool(ENCLAVES)
    route, here, there = _route(pool), SessionTable(10, 60.0, None), SessionTable(10, 60.0, None)
    opened = await _opened(there, route, "alice")
    first = await here.adopt(route, opened.id, "alice")
    second = await here.adopt(route, opened.id, "alice")
    assert first is second and len(here) == 1
