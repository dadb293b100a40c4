"""A route whose enclave restarted serves again as soon as the new pod is attested, and agents
flooding a closed route cannot turn the gateway into an amplifier.

The pool follows an ``McpRoute`` through its status (here a reader the test controls, counting
its reads). After a restart the status names a new address that the gateway has not seen yet;
the first agent to ask makes the pool catch up (read the status, attest) instead of waiting for
the periodic refresh. The attacker is an agent opening sessions on a closed route as fast as
it can: the pool reads the status and attests at most once per ``CATCH_UP_SECONDS``, and
concurrent callers share one round. The weakened pools show each test would catch the hole.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest

from cmcp_core.attestation import Expected
from cmcp_core.digest import tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.route_status import PodStatus, RouteStatus, RouteTarget
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_gateway import enclave_pool
from cmcp_gateway.enclave_pool import EnclavePool
from tests.helpers.gateway_stack import attest_policy, audit_writer

DEAD = "127.0.0.1:9"  # the pod that was scaled away: nothing listens


@dataclass
class Route:
    """What the operator's status says now, and how often the gateway has read it."""

    address: str
    digest: str
    reads: int = 0

    async def read(self) -> RouteStatus:
        self.reads += 1
        pod = PodStatus(pod="p", uid="u", node="n", address=self.address, attested=True)
        return RouteStatus(pods=(pod,), target=RouteTarget("sha256:" + "ab" * 32, self.digest))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now



async def _following(pools: list[EnclavePool], route: Route, clock: Clock) -> EnclavePool:
    pool = EnclavePool("r", replace(attest_policy(), expected=Expected()), 2.0, audit_writer(),
                       source=route.read, clock=clock)
    pools.append(pool)
    await pool.discover()
    return pool


async def test_a_restarted_enclave_serves_at_the_first_call(
        enclave: EnclaveProcess, pools: list[EnclavePool]) -> None:
    route, clock = Route(DEAD, tagged_sha256(enclave.initdata)), Clock()
    pool = await _following(pools, route, clock)
    assert not pool.attested()
    route.address = enclave.address  # the new pod is attested by the operator
    clock.now += enclave_pool.CATCH_UP_SECONDS
    pin = await pool.pick("agent")  # no refresh in between
    assert pin.address == enclave.address and route.reads == 2


async def test_weakened_pool_without_catching_up_stays_closed(
        enclave: EnclaveProcess, pools: list[EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(self: EnclavePool) -> None:
        return None

    monkeypatch.setattr(EnclavePool, "catch_up", never)
    route, clock = Route(DEAD, tagged_sha256(enclave.initdata)), Clock()
    pool = await _following(pools, route, clock)
    route.address = enclave.address
    clock.now += enclave_pool.CATCH_UP_SECONDS
    with pytest.raises(CmcpError) as closed:
        await pool.pick("agent")
    assert closed.value.code is Code.TEE_UNAVAILABLE  # until the next refresh, up to 30 s later


async def test_a_session_another_replica_opened_is_found_after_catching_up(
        enclave: EnclaveProcess, pools: list[EnclavePool]) -> None:
    """A replica that has not attested the session's enclave yet looks again before SESSION_LOST."""
    digest = tagged_sha256(enclave.initdata)
    opener = await _following(pools, Route(enclave.address, digest), Clock())
    session_id = await opener.open_session(await opener.pick("agent"), "agent")
    route, clock = Route(DEAD, digest), Clock()
    late = await _following(pools, route, clock)
    route.address = enclave.address
    clock.now += enclave_pool.CATCH_UP_SECONDS
    assert (await late.owner(session_id, "agent")).address == enclave.address


async def test_a_flood_on_a_closed_route_reads_and_attests_once_per_period(
        pools: list[EnclavePool]) -> None:
    route, clock = Route(DEAD, "sha256:" + "cd" * 32), Clock()
    pool = await _following(pools, route, clock)
    attempts = 0
    original = pool._attest

    async def counted(endpoint: enclave_pool.Endpoint) -> None:
        nonlocal attempts
        attempts += 1
        await original(endpoint)

    pool._attest = counted  # type: ignore[method-assign]
    for _ in range(3):  # three periods, each: 50 agents at once, then 50 one after another
        clock.now += enclave_pool.CATCH_UP_SECONDS
        together = await asyncio.gather(*(pool.pick(f"a{i}") for i in range(50)), return_exceptions=True)
        alone = []
        for i in range(50):
            try:
                await pool.pick(f"b{i}")
            except CmcpError as exc:
                alone.append(exc)
        assert all(isinstance(e, CmcpError) and e.code is Code.TEE_UNAVAILABLE for e in [*together, *alone])
    assert route.reads == 1 + 3 and attempts == 3  # discover at start, then one round per period


async def test_weakened_pool_without_the_rate_limit_amplifies_the_flood(
        pools: list[EnclavePool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enclave_pool, "CATCH_UP_SECONDS", 0.0)
    route, clock = Route(DEAD, "sha256:" + "cd" * 32), Clock()
    pool = await _following(pools, route, clock)
    for i in range(20):
        with pytest.raises(CmcpError):
            await pool.pick(f"b{i}")
    assert route.reads == 1 + 20  # every agent's attempt costs an API read and a dial


async def test_a_status_read_that_fails_leaves_the_route_closed(
        enclave: EnclaveProcess, pools: list[EnclavePool]) -> None:
    """The API server down (or refusing) during a catch-up: the call is refused, never let through
    an endpoint nobody attested."""
    route, clock = Route(DEAD, tagged_sha256(enclave.initdata)), Clock()
    pool = await _following(pools, route, clock)

    async def refused() -> RouteStatus:
        raise RuntimeError("apiserver: 503")

    pool.source = refused
    clock.now += enclave_pool.CATCH_UP_SECONDS
    with pytest.raises(CmcpError) as closed:
        await pool.pick("agent")
    assert closed.value.code is Code.TEE_UNAVAILABLE and not pool.attested()
