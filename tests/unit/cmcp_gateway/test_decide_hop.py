"""Decide over the lean hop: replies matched per call, refusals relayed with their code, and
every failure of the hop closed (``TEE_UNAVAILABLE``, the endpoint distrusted when it broke).

The honest enclave is the real one in process (``serve(decide_listen=...)``); the broken or lying
ones are :class:`ScriptedHop`, a framed server written here that plays the enclave's side of the
hop as each test scripts it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.decide_frames import HEADER, MAX_REPLY_FRAME, VERSION, Kind, frame, json_frame
from cmcp_core.digest import json_digest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.gateway_identity import initdata_value
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import EnclaveServer, serve
from cmcp_gateway import decide_hop
from cmcp_gateway.decide_hop import DecisionHop
from cmcp_gateway.enclave_pool import EnclavePool
from tests.helpers.decide_requests import decide_request as request
from tests.helpers.gateway_stack import attest_policy, audit_writer
from tests.paths import EXAMPLES

Live = tuple[Enclave, EnclaveServer]

BUNDLE = EXAMPLES / "minimal"
GATEWAY = Ed25519PrivateKey.generate()
DEADLINE = 5.0
KID = "scripted-enclave"


class Broken:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()




@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Enclave, EnclaveServer]]:
    enclave = inprocess_enclave(BUNDLE, tmp_path, gateway_keys=[initdata_value(GATEWAY)])
    server, _ = await serve(enclave, "127.0.0.1:0", Metrics(), decide_listen="127.0.0.1:0")
    try:
        yield enclave, server
    finally:
        await server.stop(0)


def hop_to(server: EnclaveServer, enclave: Enclave, broken: Broken, *, key: Ed25519PrivateKey = GATEWAY,
           deadline: float = DEADLINE) -> DecisionHop:
    assert server.hop is not None
    return DecisionHop("127.0.0.1", server.hop.port, key, lambda: enclave.kid, broken, deadline)


Script = Callable[["ScriptedHop", asyncio.StreamWriter, Any], Awaitable[None]]


class ScriptedHop:
    """The enclave's side of the hop as a test scripts it: ``hello`` (raw bytes sent instead of
    an honest HELLO), ``on_decide`` (what happens to each DECIDE), ``deaf`` (no PONG)."""

    def __init__(self, on_decide: Script | None = None, hello: bytes | None = None,
                 deaf: bool = False) -> None:
        self.on_decide, self.hello, self.deaf = on_decide, hello, deaf
        self.connections = 0
        self.pings = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> ScriptedHop:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            writer.write(self.hello if self.hello is not None else
                         json_frame(Kind.HELLO, {"version": VERSION, "kid": KID, "nonce": "bm9uY2U"}))
            if self.hello is not None and len(self.hello) < 4 + HEADER.unpack(self.hello[:5])[0]:  # cut
                await writer.drain()
                return
            while True:
                length, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
                payload = await reader.readexactly(length - 1)
                if kind == Kind.PROOF:
                    writer.write(frame(Kind.READY))
                elif kind == Kind.PING:
                    self.pings += 1
                    if not self.deaf:
                        writer.write(frame(Kind.PONG, payload))
                elif kind == Kind.DECIDE and self.on_decide is not None:
                    await self.on_decide(self, writer, enclave_pb2.DecideRequest.FromString(payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def hop(self, broken: Broken, deadline: float = DEADLINE) -> DecisionHop:
        return DecisionHop("127.0.0.1", self.port, GATEWAY, lambda: KID, broken, deadline)

    async def stop(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()


def refusal(ask: Any, code: str = "PRINCIPAL_BUSY") -> bytes:
    return frame(Kind.REPLY, enclave_pb2.DecideReply(call_id=ask.call_id, error_code=code,
                                                     error_detail="scripted").SerializeToString())


async def test_concurrent_decisions_each_get_their_own_reply(live: Live) -> None:
    enclave, server = live
    broken = Broken()
    hop = hop_to(server, enclave, broken)
    asks = [request(enclave.open_session("agent", trail=NO_TRAIL), text=f"t{i}") for i in range(40)]
    answers = await asyncio.gather(*(hop.decide(r) for r in asks))
    for ask, answer in zip(asks, answers, strict=True):
        doc = json.loads(answer.decision_json)
        assert (doc["call_id"], doc["args_digest"]) == (ask.call_id, ask.arguments_digest)
        assert doc["effective"] == "allow" and answer.permit
    await hop.close()
    assert broken.count == 0


async def test_a_refusal_is_relayed_with_its_code_and_the_connection_goes_on(
        live: Live) -> None:
    enclave, server = live
    hop = hop_to(server, enclave, Broken())
    with pytest.raises(CmcpError) as refused:
        await hop.decide(request(enclave.open_session("agent", trail=NO_TRAIL), digest="sha256:" + "0" * 64))
    assert refused.value.code is Code.ARGS_DIGEST_MISMATCH
    connection = hop._connection
    assert (await hop.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))).permit
    assert hop._connection is connection
    await hop.close()


async def test_a_gateway_key_the_enclave_does_not_trust_is_closed(live: Live) -> None:
    enclave, server = live
    broken = Broken()
    hop = hop_to(server, enclave, broken, key=Ed25519PrivateKey.generate())
    with pytest.raises(CmcpError) as refused:
        await hop.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))
    assert refused.value.code is Code.TEE_UNAVAILABLE and "GATEWAY_UNAUTHENTICATED" in refused.value.detail
    assert broken.count == 1
    await hop.close()


async def test_no_reply_within_the_deadline_fails_that_call_alone() -> None:
    async def answer_all_but_the_slow_one(_: ScriptedHop, writer: asyncio.StreamWriter, ask: Any) -> None:
        if ask.session_id != "slow":
            writer.write(refusal(ask))

    scripted = await ScriptedHop(answer_all_but_the_slow_one).start()
    broken = Broken()
    hop = scripted.hop(broken, deadline=0.3)
    slow, other = await asyncio.gather(hop.decide(request("slow")), hop.decide(request("other")),
                                       return_exceptions=True)
    assert isinstance(slow, CmcpError) and slow.code is Code.TEE_UNAVAILABLE and "exceeded" in slow.detail
    assert isinstance(other, CmcpError) and other.code is Code.PRINCIPAL_BUSY  # answered, on the same hop
    assert broken.count == 0 and hop._connection is not None and hop._connection.waiting == {}
    await hop.close()
    await scripted.stop()


@pytest.mark.parametrize("how", ["killed", "cut-mid-frame", "oversized-prefix", "garbage-reply"])
async def test_a_hop_that_breaks_mid_call_fails_every_waiting_call(how: str) -> None:
    """The enclave dies, the connection is cut in the middle of a reply, the enclave announces a
    frame larger than any answer, or sends a reply that is not one: every waiting call fails
    TEE_UNAVAILABLE at once (not at its deadline) and the endpoint is distrusted."""
    seen: list[Any] = []

    async def break_on_the_third(scripted: ScriptedHop, writer: asyncio.StreamWriter, ask: Any) -> None:
        seen.append(ask)
        if len(seen) < 3:
            return
        if how == "cut-mid-frame":
            writer.write(refusal(ask)[:12])
        elif how == "oversized-prefix":
            writer.write(HEADER.pack(MAX_REPLY_FRAME + 1, Kind.REPLY))
            await writer.drain()
            return  # the connection stays open: the gateway must not wait for the body
        elif how == "garbage-reply":
            writer.write(frame(Kind.REPLY, b"\xff\xff\xff"))
            await writer.drain()
            return
        await writer.drain()
        writer.transport.abort()

    scripted = await ScriptedHop(break_on_the_third).start()
    broken = Broken()
    hop = scripted.hop(broken, deadline=60.0)
    results = await asyncio.gather(*(hop.decide(request(f"s{i}")) for i in range(3)), return_exceptions=True)
    for result in results:
        assert isinstance(result, CmcpError) and result.code is Code.TEE_UNAVAILABLE
        assert "broke" in result.detail
    assert broken.count == 1 and hop._connection is None
    await hop.close()
    await scripted.stop()


@pytest.mark.parametrize("hello", [
    json_frame(Kind.HELLO, {"version": VERSION, "kid": KID, "nonce": "bm9uY2U"})[:9],  # cut mid-handshake
    json_frame(Kind.HELLO, {"version": VERSION + 1, "kid": KID, "nonce": "bm9uY2U"}),  # another version
    json_frame(Kind.HELLO, {"version": VERSION, "kid": "another-enclave", "nonce": "bm9uY2U"}),
    frame(Kind.HELLO, b"not json"),
    json_frame(Kind.ERROR, {"code": "GATEWAY_UNAUTHENTICATED", "detail": "no"}),
])
async def test_a_handshake_that_is_not_the_attested_enclaves_fails_closed(hello: bytes) -> None:
    scripted = await ScriptedHop(hello=hello).start()
    broken = Broken()
    hop = scripted.hop(broken, deadline=60.0)
    with pytest.raises(CmcpError) as failed:
        await hop.decide(request())
    assert failed.value.code is Code.TEE_UNAVAILABLE
    assert broken.count == 1
    await hop.close()
    await scripted.stop()


async def test_after_a_break_it_reconnects_only_once_attested_again(live: Live) -> None:
    enclave, server = live
    assert server.hop is not None
    broken = Broken()
    attested: list[str | None] = [enclave.kid]
    hop = DecisionHop("127.0.0.1", server.hop.port, GATEWAY, lambda: attested[0], broken, DEADLINE)
    assert (await hop.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))).permit
    first = hop._connection
    for connection in list(server.hop.connections):  # the enclave's end goes away
        connection.close()
    await asyncio.wait_for(broken.event.wait(), 5)
    attested[0] = None  # the pool's _suspect: not attested until re-attestation
    with pytest.raises(CmcpError) as refused:
        await hop.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))
    assert refused.value.code is Code.TEE_UNAVAILABLE and "not attested" in refused.value.detail
    assert not server.hop.connections  # no connection without attestation
    attested[0] = enclave.kid
    assert (await hop.decide(request(enclave.open_session("agent", trail=NO_TRAIL)))).permit
    assert hop._connection is not None and hop._connection is not first
    await hop.close()


@pytest.mark.parametrize("deaf", [False, True])
async def test_heartbeats_find_an_enclave_that_stopped_answering(monkeypatch: pytest.MonkeyPatch,
                                                                 deaf: bool) -> None:
    monkeypatch.setattr(decide_hop, "IDLE_SECONDS", 0.02)
    monkeypatch.setattr(decide_hop, "PONG_SECONDS", 0.05)

    async def answer(_: ScriptedHop, writer: asyncio.StreamWriter, ask: Any) -> None:
        writer.write(refusal(ask))

    scripted = await ScriptedHop(answer, deaf=deaf).start()
    broken = Broken()
    hop = scripted.hop(broken)
    with pytest.raises(CmcpError):  # the scripted refusal: the connection is up
        await hop.decide(request())
    if deaf:
        await asyncio.wait_for(broken.event.wait(), 5)
        assert hop._connection is None
    else:
        async with asyncio.timeout(5):
            while scripted.pings < 3:  # noqa: ASYNC110 - pinged and answered, several times
                await asyncio.sleep(0.01)
        assert broken.count == 0 and hop._connection is not None
    await hop.close()
    await scripted.stop()


@pytest.mark.parametrize("offered", [True, False])
async def test_the_pool_decides_over_the_hop_only_when_attest_offers_it(tmp_path: Path,
                                                                       offered: bool) -> None:
    enclave = inprocess_enclave(BUNDLE, tmp_path, gateway_keys=[initdata_value(GATEWAY)])
    server, port = await serve(enclave, "127.0.0.1:0", Metrics(),
                               decide_listen="127.0.0.1:0" if offered else None)
    pool = EnclavePool("hop", attest_policy(enclave.bundle_hash), DEADLINE, audit_writer(tmp_path),
                       identity=GATEWAY)
    address = f"127.0.0.1:{port}"
    await pool.set_endpoints([address])
    try:
        pin = await pool.pick("agent")
        session_id = await pool.open_session(pin, "agent")
        args = {"text": "hi"}
        decision = await pool.decide(
            pin, session_id=session_id, call_id=uuid.uuid4().hex, principal="agent", method="tools/call",
            tool="echo", arguments_json=json.dumps(args).encode(), args_digest=json_digest(args),
            audience=DEFAULT_AUDIENCE)
        assert decision.permit
        endpoint = pool.endpoints[address]
        assert (endpoint.hop is not None) is offered
        assert (endpoint.decisions._call is None) is offered  # the gRPC stream was never opened
    finally:
        await pool.close()
        await server.stop(0)


async def test_calls_beyond_the_in_flight_bound_wait_for_a_slot_within_their_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bound reached, the next call is not sent at all: it waits for a slot and, when
    none frees within its deadline, fails TEE_UNAVAILABLE alone (the connection stays)."""
    monkeypatch.setattr(decide_hop, "MAX_IN_FLIGHT", 2)
    seen: list[Any] = []

    async def hold(_: ScriptedHop, writer: asyncio.StreamWriter, ask: Any) -> None:
        seen.append(ask.session_id)

    scripted = await ScriptedHop(hold).start()
    broken = Broken()
    hop = scripted.hop(broken, deadline=0.5)
    results = await asyncio.gather(*(hop.decide(request(f"s{i}")) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, CmcpError) and r.code is Code.TEE_UNAVAILABLE for r in results)
    assert sorted(seen) == ["s0", "s1"]  # the third never left the gateway
    assert broken.count == 0 and hop._connection is not None
    await hop.close()
    await scripted.stop()


@pytest.mark.parametrize("weakened", [False, True])
async def test_a_writer_the_enclave_stops_reading_waits_and_fails_at_its_deadline(
        monkeypatch: pytest.MonkeyPatch, weakened: bool) -> None:
    """An enclave that stops reading fills the socket: the gateway's transport pauses writing and
    the next call waits (its bytes are not piled up in memory) until its deadline. The weakened
    writer (ignores the pause) piles every frame into the transport's buffer, which this catches."""
    if weakened:
        async def never_wait(self: Any) -> None:
            return None

        monkeypatch.setattr(decide_hop._Connection, "writable", never_wait)
    stop_reading = asyncio.Event()

    async def stall(_: ScriptedHop, writer: asyncio.StreamWriter, ask: Any) -> None:
        stop_reading.set()
        await asyncio.Event().wait()  # never reads again

    scripted = await ScriptedHop(stall).start()
    hop = scripted.hop(Broken(), deadline=2.0)
    big = "x" * (400 * 1024)
    calls = [asyncio.ensure_future(hop.decide(request(f"s{i}", text=big))) for i in range(40)]
    await asyncio.wait_for(stop_reading.wait(), 5)
    connection = hop._connection
    assert connection is not None
    async with asyncio.timeout(5):
        while connection._writable is None:  # noqa: ASYNC110 - the transport offers no event
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the other calls get their turn to write (or to wait)
    buffered = connection.transport.get_write_buffer_size() if connection.transport else 0
    # the waiting calls' frames are not in the transport's buffer (weakened: all of them are)
    assert (buffered < 2 * len(big)) is not weakened
    for call in calls:
        with pytest.raises(CmcpError) as late:
            await call
        assert late.value.code is Code.TEE_UNAVAILABLE
    await hop.close()
    await scripted.stop()
