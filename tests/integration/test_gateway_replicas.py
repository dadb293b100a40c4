"""Stateless gateways as real processes: any replica serves any session, and no replica, new
session, new connection or stateless request sheds a principal's taint.

The deployment is the dev kit's local stack (:class:`cmcp_devkit.stack.LocalStack`): enclaves on
the simulated TEE (route ``solo`` with one enclave, route ``pair`` with two), the guard, the
``mcp`` SDK upstream and gateway replicas, each its own ``cmcp-gateway`` process sharing nothing
but the enclaves. Agents are the official ``mcp`` SDK client behind :class:`Balancer`, which
plays the Service in front of the replicas with the test choosing the replica.

Every protection is shown to matter: a weakened replica (test code only, started with one
function patched) fails the same scenario.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_core.session_id import mint, owner_prefix
from cmcp_devkit.initdata import render_initdata
from cmcp_devkit.stack import LocalStack
from tests.paths import EXAMPLES

SERVICE_HOST = "gateway.service"  # the name the balancer answers to, as a Service's would
BUNDLE = EXAMPLES / "realistic"
PHI = ("ehr.read_patient_record", {"patient_id": "p-1"})  # allowed; taints the principal (phi)
MAIL = ("email.send_external", {"to": ["bob@partner.example"], "body": "hi"})  # denied once tainted
SAFE = ("slack.post_internal", {"channel": "ops", "body": "still here"})  # allowed after PHI too
TRANSFER = ("payments.transfer", {"amount": 50_000, "currency": "EUR", "to": "x"})  # over the limit: denied
AGENTS = ["ann", "ben", "cat", "dan", "eve", "fay", "gil", "hal", "ivy", "jon", "kim", "leo", "mallory"]
LOST_DEADLINE = 30.0  # how long a replica may take to notice a killed enclave (it re-attests every 2 s)

# Weakened replicas: the gateway's own main, with one function patched. Test code only.
_PRELUDE = "from cmcp_gateway.main import main\n"
WEAKENINGS = {
    # Pins as the session-id key did: new sessions of one principal spread over the enclaves
    # (round robin here, so the spreading is deterministic).
    "spread": _PRELUDE + """
import itertools
from cmcp_gateway import pinning
turn = itertools.count()
def spread(principal, candidates, route_name):
    attested = sorted(candidates, key=lambda c: c.kid)
    chosen = attested[next(turn) % len(attested)]
    return pinning.Pin(chosen.address, chosen.kid)
pinning.pick = spread
""",
    # The gateway before adoption: a session this replica never saw is unknown (404).
    "no-adoption": _PRELUDE + """
from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.sessions import SessionTable
async def refuse(self, runtime, session_id, agent):
    raise CmcpError(Code.SESSION_UNKNOWN, "never seen on this replica")
SessionTable.adopt = refuse
""",
    # Adoption on the id alone: the enclave is not asked whose session it is.
    "trusting": _PRELUDE + """
from cmcp_gateway.sessions import SessionTable
adopt = SessionTable.adopt
async def trusting(self, runtime, session_id, agent, access_token=""):
    async def yes(*args):
        return []
    runtime.pool.list_tools = yes
    try:
        return await adopt(self, runtime, session_id, agent, access_token)
    finally:
        del runtime.pool.list_tools
SessionTable.adopt = trusting
""",
    # A session whose enclave is gone is moved to the principal's enclave among the survivors.
    "moved": _PRELUDE + """
from cmcp_gateway import pinning
def moved(session_id, principal, candidates):
    return pinning.pick(principal, list(candidates), "")
pinning.owner = moved
""",
}


@dataclass
class ReplicaStack(LocalStack):
    """The local stack whose gateway replicas may be weakened (``weakened``: replica -> weakening)."""

    weakened: dict[str, str] = field(default_factory=dict)

    def gateway_argv(self, config_path: Path) -> list[str]:
        weakening = self.weakened.get(config_path.stem)
        if weakening is None:
            return super().gateway_argv(config_path)
        return [sys.executable, "-c", WEAKENINGS[weakening] + "\nmain()\n", "--config", str(config_path)]

    def replica(self, name: str, weakening: str | None = None) -> str:
        if weakening is not None:
            self.weakened[name] = weakening
        return self.start_gateway(name)

    def stop_replica(self, name: str) -> None:
        proc = self.gateways.pop(name)
        proc.stop()
        self.procs.remove(proc)

    def executed(self, tool: str) -> int:
        """How often the upstream ran ``tool`` (read beside the guard: reading runs nothing)."""
        by_tool: dict[str, int] = httpx.get(f"{self.raw_upstream_base}/calls", timeout=10).json()["by_tool"]
        return by_tool.get(tool, 0)


def launch(workdir: Path, enclaves: list[str], pools: dict[str, list[str]]) -> ReplicaStack:
    stack = ReplicaStack(workdir, tokens={f"tok-{a}": a for a in AGENTS}, pools=pools,
                         allowed_hosts=(SERVICE_HOST,))
    try:
        for name in enclaves:
            stack.start_enclave_on(name, BUNDLE, render_initdata(BUNDLE, audience=stack.audience))
        stack.start_upstream()
        stack.start_gateway("a")
        stack.start_gateway("b")
    except BaseException:
        stack.close()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaStack]:
    deployment = launch(tmp_path_factory.mktemp("replicas"), ["solo", "one", "two"], {"pair": ["one", "two"]})
    try:
        yield deployment
    finally:
        deployment.close()


class Balancer(httpx2.AsyncBaseTransport):
    """The Service in front of the replicas, with the test choosing: every request goes to
    ``target`` whatever URL the client uses; :meth:`to` switches replica mid-session."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.inner = httpx2.AsyncHTTPTransport()

    def to(self, target: str) -> None:
        self.target = target

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        replica = httpx2.URL(self.target)
        request.url = request.url.copy_with(host=replica.host, port=replica.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def agent(balancer: Balancer, route: str, who: str, mode: str = "legacy") -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer tok-{who}"}, timeout=httpx2.Timeout(30.0),
                              transport=balancer)
    url = f"http://{SERVICE_HOST}/mcp/{route}"
    return Client(streamable_http_client(url, http_client=http), mode=mode)  # type: ignore[arg-type]


def code_of(exc: BaseException) -> str:
    """The gateway's code in a refusal (``mcp:<code>`` for a transport-level one, e.g. a 404),
    also from inside the exception groups the SDK's task groups raise."""
    if isinstance(exc, BaseExceptionGroup):
        return code_of(exc.exceptions[0])
    if not isinstance(exc, MCPError):
        raise exc
    data = exc.error.data
    if isinstance(data, dict) and "error_code" in data:
        return str(data["error_code"])
    return f"mcp:{exc.error.code}"


async def outcome(client: Client, call: tuple[str, dict[str, Any]]) -> str:
    """``allowed``, or the coded refusal."""
    try:
        await client.call_tool(*call)
    except (MCPError, BaseExceptionGroup) as exc:
        return code_of(exc)
    return "allowed"


async def fresh_outcome(replica: str, route: str, who: str, call: tuple[str, dict[str, Any]]) -> str:
    """``call`` in a new session of ``who`` on ``replica``, opening it included."""
    try:
        async with agent(Balancer(replica), route, who) as client:
            return await outcome(client, call)
    except (MCPError, BaseExceptionGroup) as exc:
        return code_of(exc)


async def denial(client: Client, call: tuple[str, dict[str, Any]]) -> tuple[str, str]:
    """The code and the session id of a refused call (the gateway names the session it used)."""
    with pytest.raises(MCPError) as refused:
        await client.call_tool(*call)
    data = refused.value.error.data
    assert isinstance(data, dict), refused.value
    return str(data["error_code"]), str(data.get("session_id", ""))


# --- taint survives every way of starting over ------------------------------------------------


async def taint_scenario(replicas: tuple[str, str], route: str, who: str) -> dict[str, str]:
    """PHI read through the first replica; then the partner mail every way an agent could start
    over: the same session through the other replica, a new session (and MCP connection) and a
    stateless request on each replica. Returns each step's outcome."""
    first, second = replicas
    steps: dict[str, str] = {}
    balancer = Balancer(first)
    async with agent(balancer, route, who) as client:
        steps["phi read"] = await outcome(client, PHI)
        steps["mail, same session"] = await outcome(client, MAIL)
        balancer.to(second)
        steps["mail, same session, other replica"] = await outcome(client, MAIL)
        steps["safe call, same session, other replica"] = await outcome(client, SAFE)
    for n, replica in enumerate(replicas):
        async with agent(Balancer(replica), route, who) as fresh:
            steps[f"mail, new session, replica {n}"] = await outcome(fresh, MAIL)
        async with agent(Balancer(replica), route, who, mode="auto") as stateless:
            steps[f"mail, stateless, replica {n}"] = await outcome(stateless, MAIL)
    return steps


def held(steps: dict[str, str]) -> bool:
    """The taint held: the PHI read and the safe call ran, every mail was refused by policy."""
    return all(v == ("POLICY_DENY" if k.startswith("mail") else "allowed") for k, v in steps.items())


@pytest.mark.parametrize(("route", "who"), [("solo", "ann"), ("pair", "ben")])
async def test_taint_survives_a_new_session_connection_stateless_request_and_replica(
    stack: ReplicaStack, route: str, who: str
) -> None:
    """Two gateway processes in front of one enclave (``solo``) and of two (``pair``)."""
    mails = stack.executed(MAIL[0])
    steps = await taint_scenario((stack.gateway_urls["a"], stack.gateway_urls["b"]), route, who)
    assert held(steps), steps
    assert stack.executed(MAIL[0]) == mails


async def test_weakened_replicas_pinning_sessions_not_principals_shed_the_taint(stack: ReplicaStack) -> None:
    """Replicas that spread one principal's sessions over the pair (as pinning by session id
    did), once both enclaves hold the principal: an enclave that does not hold a principal takes
    it over from its trail, but one that holds it decides on its own state, which lacks what the
    other enclave let through since; some new session or stateless request runs the mail."""
    replicas = (stack.replica("spread-a", "spread"), stack.replica("spread-b", "spread"))
    try:
        for _ in range(2):  # round robin: the principal's first sessions land on each enclave in turn
            async with agent(Balancer(replicas[0]), "pair", "cat") as warm:
                assert await outcome(warm, SAFE) == "allowed"
        mails = stack.executed(MAIL[0])
        steps = await taint_scenario(replicas, "pair", "cat")
        assert not held(steps) and "allowed" in {v for k, v in steps.items() if k.startswith("mail")}, steps
        assert stack.executed(MAIL[0]) > mails
    finally:
        stack.stop_replica("spread-a")
        stack.stop_replica("spread-b")


# --- a replica killed mid-session -------------------------------------------------------------


async def kill_scenario(stack: ReplicaStack, names: tuple[str, str], who: str) -> dict[str, str]:
    """A session on replica 0, tainted; replica 0 is SIGKILLed; the session goes on through
    replica 1, then through replica 0 started again. Returns each step's outcome."""
    first, second = names
    steps: dict[str, str] = {}
    balancer = Balancer(stack.gateway_urls[first])
    async with agent(balancer, "pair", who) as client:
        steps["phi read"] = await outcome(client, PHI)
        code, session_id = await denial(client, MAIL)
        steps["mail before the kill"] = code
        stack.kill(stack.gateways[first])
        balancer.to(stack.gateway_urls[second])
        steps["mail after the kill, other replica"] = await outcome(client, MAIL)
        steps["safe call after the kill, other replica"] = await outcome(client, SAFE)
        if steps["mail after the kill, other replica"] == "POLICY_DENY":
            _, same = await denial(client, MAIL)
            steps["same session id"] = "allowed" if same == session_id else f"changed to {same}"
        balancer.to(stack.replica(first))  # the killed replica comes back (empty table)
        steps["safe call, restarted replica"] = await outcome(client, SAFE)
        steps["mail, restarted replica"] = await outcome(client, MAIL)
    return steps


async def test_a_replica_killed_mid_session_loses_nothing(stack: ReplicaStack) -> None:
    stack.replica("k1")
    stack.replica("k2")
    try:
        mails = stack.executed(MAIL[0])
        steps = await kill_scenario(stack, ("k1", "k2"), "dan")
        assert held(steps) and steps["same session id"] == "allowed", steps
        assert stack.executed(MAIL[0]) == mails
    finally:
        stack.stop_replica("k1")
        stack.stop_replica("k2")


async def test_weakened_replicas_without_adoption_lose_the_session_with_the_replica(
    stack: ReplicaStack,
) -> None:
    stack.replica("w1", "no-adoption")
    stack.replica("w2", "no-adoption")
    try:
        steps = await kill_scenario(stack, ("w1", "w2"), "eve")
        assert steps["safe call after the kill, other replica"] != "allowed", steps
    finally:
        stack.stop_replica("w1")
        stack.stop_replica("w2")


# --- the enclave judges every adoption --------------------------------------------------------


async def test_another_agents_session_id_is_404_on_another_replica(stack: ReplicaStack) -> None:
    """Mallory learnt Fay's session id: replica b never saw it and refuses it to Mallory (404,
    as an unknown session); Mallory's DELETE closes nothing; Fay goes on."""
    balancer = Balancer(stack.gateway_urls["a"])
    async with agent(balancer, "pair", "fay") as client:
        assert await outcome(client, SAFE) == "allowed"
        _, session_id = await denial(client, TRANSFER)
        async with httpx.AsyncClient(timeout=30) as http:
            for verb in ("POST", "DELETE"):
                stolen = await http.request(
                    verb, f"{stack.gateway_urls['b']}/mcp/pair",
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"} if verb == "POST" else None,
                    headers={"authorization": "Bearer tok-mallory", "mcp-session-id": session_id,
                             "accept": "application/json, text/event-stream"},
                )
                assert stolen.status_code == 404, (verb, stolen.text)
        balancer.to(stack.gateway_urls["b"])
        assert await outcome(client, SAFE) == "allowed"


async def test_weakened_replica_trusting_the_id_lets_mallory_close_a_session(stack: ReplicaStack) -> None:
    trusting = stack.replica("trusting", "trusting")
    try:
        balancer = Balancer(stack.gateway_urls["a"])
        async with agent(balancer, "pair", "gil") as client:
            assert await outcome(client, SAFE) == "allowed"
            _, session_id = await denial(client, TRANSFER)
            async with httpx.AsyncClient(timeout=30) as http:
                closed = await http.delete(f"{trusting}/mcp/pair", headers={
                    "authorization": "Bearer tok-mallory", "mcp-session-id": session_id})
            assert closed.status_code == 200 and closed.json()["session_id"] == session_id
            balancer.to(stack.gateway_urls["b"])
            assert await outcome(client, SAFE) != "allowed"  # Gil's session is gone
    finally:
        stack.stop_replica("trusting")


async def test_an_id_no_enclave_minted_is_404(stack: ReplicaStack) -> None:
    enclave = stack.enclaves["one"]
    forged = mint(str(enclave.ready["kid"]))
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            f"{stack.gateway_urls['b']}/mcp/pair", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"authorization": "Bearer tok-hal", "mcp-session-id": forged,
                     "accept": "application/json, text/event-stream"},
        )
    assert resp.status_code == 404, resp.text


# --- fairness: one agent's flood of initialize ------------------------------------------------


async def flood_then_call(stack: ReplicaStack, limits: dict[str, int], who: str) -> tuple[int, str]:
    """Mallory opens sessions on two fresh replicas until refused; then ``who`` works on both.
    Returns how many Mallory got and the other agent's worst outcome."""
    stack.gateway_limits = limits
    replicas = [stack.replica(f"flood-{n}") for n in range(2)]
    stack.gateway_limits = {}
    try:
        hello = {"protocolVersion": "2025-06-18", "capabilities": {},
                 "clientInfo": {"name": "flood", "version": "0"}}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
        mallory = {"authorization": "Bearer tok-mallory", "accept": "application/json, text/event-stream"}
        opened = 0
        async with httpx.AsyncClient(timeout=30) as http:
            for replica in replicas:
                for _ in range(limits["max_sessions"] + 5):
                    resp = await http.post(f"{replica}/mcp/solo", json=init, headers=mallory)
                    if "error" in resp.json():
                        assert resp.json()["error"]["data"]["error_code"] == "SESSION_LIMIT"
                        break
                    opened += 1
        outcomes = [await fresh_outcome(replica, "solo", who, SAFE) for replica in replicas]
        return opened, next((o for o in outcomes if o != "allowed"), "allowed")
    finally:
        for n in range(2):
            stack.stop_replica(f"flood-{n}")


async def test_a_flood_of_initialize_from_one_agent_leaves_the_others_working(stack: ReplicaStack) -> None:
    opened, other = await flood_then_call(stack, {"max_sessions": 24, "max_sessions_per_agent": 8}, "ivy")
    assert opened == 16 and other == "allowed"


async def test_weakened_limit_without_a_per_agent_bound_lets_the_flood_lock_others_out(
    stack: ReplicaStack,
) -> None:
    opened, other = await flood_then_call(stack, {"max_sessions": 24, "max_sessions_per_agent": 24}, "jon")
    assert opened == 48 and other == "SESSION_LIMIT"


# --- an enclave of the pair killed ------------------------------------------------------------


async def poll_until_settled(client: Client) -> list[str]:
    """The tainted call, repeated while the replica still finds the killed enclave merely
    unreachable (``TEE_UNAVAILABLE``, until it stops offering it); every outcome on the way."""
    seen: list[str] = []
    async with asyncio.timeout(LOST_DEADLINE):
        while not seen or seen[-1] == "TEE_UNAVAILABLE":
            seen.append(await outcome(client, MAIL))
    return seen


async def test_a_killed_enclave_loses_its_principals_sessions_never_starts_clean(tmp_path: Path) -> None:
    stack = launch(tmp_path, ["one", "two"], {"pair": ["one", "two"]})
    try:
        balancer = Balancer(stack.gateway_urls["a"])
        async with agent(balancer, "pair", "kim") as client:
            assert await outcome(client, PHI) == "allowed"
            _, session_id = await denial(client, MAIL)
            prefix = owner_prefix(session_id)
            assert prefix is not None
            (owner,) = [n for n, h in stack.enclaves.items() if str(h.ready["kid"]).startswith(prefix)]
            stack.kill(stack.enclaves[owner].proc)
            on_a = await poll_until_settled(client)
            balancer.to(stack.gateway_urls["b"])  # b never saw the session: it adopts, finds the owner gone
            on_b = await poll_until_settled(client)
            assert on_a[-1] == on_b[-1] == "SESSION_LOST", (on_a, on_b)
            assert stack.executed(MAIL[0]) == 0
            # The weakening: a replica that moves the session to the principal's surviving enclave.
            # It answers something else than SESSION_LOST, which the assertion above catches: a
            # clean start there (the mail runs) where the enclave adopts any id, else its 404.
            balancer.to(stack.replica("moved", "moved"))
            moved = await poll_until_settled(client)
            assert moved[-1] != "SESSION_LOST", moved
            assert stack.executed(MAIL[0]) == (1 if moved[-1] == "allowed" else 0)
        # The route still serves other principals on the surviving enclave.
        async with agent(Balancer(stack.gateway_urls["b"]), "pair", "leo") as other:
            assert await outcome(other, SAFE) == "allowed"
    finally:
        stack.close()


async def test_a_killed_enclaves_principal_does_not_start_clean_on_the_survivor(tmp_path: Path) -> None:
    """The sessions are lost (above); a NEW session of that principal lands on the surviving
    enclave, which must not start it clean: it takes the principal over from the trail the dead
    enclave signed (appraised from the attestation the gateway kept), so the mail stays denied by
    the taint rule. The weakened enclave of tests/unit/cmcp_enclave/test_handover.py, which starts
    an unknown principal clean, lets it through."""
    stack = launch(tmp_path, ["one", "two"], {"pair": ["one", "two"]})
    try:
        async with agent(Balancer(stack.gateway_urls["a"]), "pair", "kim") as client:
            assert await outcome(client, PHI) == "allowed"
            _, session_id = await denial(client, MAIL)
        prefix = owner_prefix(session_id)
        (owner,) = [n for n, h in stack.enclaves.items() if str(h.ready["kid"]).startswith(prefix or "-")]
        stack.kill(stack.enclaves[owner].proc)
        seen = []
        async with asyncio.timeout(LOST_DEADLINE):  # until the replica stops offering the dead enclave
            while not seen or seen[-1] == "TEE_UNAVAILABLE":
                seen.append(await fresh_outcome(stack.gateway_urls["b"], "pair", "kim", MAIL))
        assert seen[-1] == "POLICY_DENY" and stack.executed(MAIL[0]) == 0, seen
    finally:
        stack.close()
