"""The enclave's lean decision hop, played against by a raw framed client (the tests' attacker).

Real enclave in process, real gRPC server and hop listener (``serve(decide_listen=...)``); the
initdata names one gateway key. Each security check has a weakened enclave next to it showing
the test would catch the hole.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import decide_frames
from cmcp_core.decide_frames import HEADER, PROOF_RPC, VERSION, Kind, frame, json_frame
from cmcp_core.decision import verify_decision
from cmcp_core.digest import b64url_decode, json_digest
from cmcp_core.gateway_identity import initdata_value, make_proof
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, carried, inprocess_enclave
from cmcp_enclave import decide_hop
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.scheduler import DecisionScheduler
from cmcp_enclave.server import EnclaveServer, serve
from tests.paths import EXAMPLES

Live = tuple[Enclave, EnclaveServer, int]

BUNDLE = EXAMPLES / "minimal"
GATEWAY = Ed25519PrivateKey.generate()


class RawHop:
    """A framed TCP client that does exactly what a test tells it, nothing more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawHop:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def read(self) -> tuple[int, bytes] | None:
        """The next frame, or ``None`` at EOF (a cut mid-frame counts as EOF)."""
        try:
            length, kind = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            return kind, await self.reader.readexactly(length - 1)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def hello(self) -> dict[str, Any]:
        got = await self.read()
        assert got is not None and got[0] == Kind.HELLO
        return dict(json.loads(got[1]))

    async def handshake(self, key: Ed25519PrivateKey = GATEWAY) -> dict[str, Any]:
        hello = await self.hello()
        proof = make_proof(key, rpc=PROOF_RPC, enclave_kid=hello["kid"],
                           request=b64url_decode(hello["nonce"]), now=time.time())
        await self.send(json_frame(Kind.PROOF, {"version": VERSION, "proof": proof}))
        return hello

    async def refusal(self) -> str:
        """The code of the ERROR frame the enclave sends before closing, then EOF."""
        got = await self.read()
        assert got is not None and got[0] == Kind.ERROR, got
        assert await self.read() is None  # closed right after
        return str(json.loads(got[1])["code"])

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Enclave, EnclaveServer, int]]:
    enclave = inprocess_enclave(BUNDLE, tmp_path, gateway_keys=[initdata_value(GATEWAY)])
    server, _ = await serve(enclave, "127.0.0.1:0", Metrics(), decide_listen="127.0.0.1:0")
    assert server.hop is not None
    try:
        yield enclave, server, server.hop.port
    finally:
        await server.stop(0)


def decide_request(enclave: Enclave, text: str = "hi") -> Any:
    args = {"text": text}
    return enclave_pb2.DecideRequest(
        session_id=enclave.open_session("agent", trail=NO_TRAIL), call_id=uuid.uuid4().hex, principal="agent",
        method="tools/call", tool="echo", arguments_json=json.dumps(args).encode(),
        arguments_digest=json_digest(args), audience=DEFAULT_AUDIENCE)


async def test_a_gateway_gets_the_same_signed_decision_and_its_audit_entry(
        live: Live) -> None:
    enclave, _, port = live
    hop = await RawHop.connect(port)
    hello = await hop.handshake()
    assert hello["kid"] == enclave.kid and hello["version"] == VERSION
    assert await hop.read() == (Kind.READY, b"")
    ask = decide_request(enclave)
    await hop.send(frame(Kind.DECIDE, ask.SerializeToString()))
    got = await hop.read()
    assert got is not None and got[0] == Kind.REPLY
    reply = enclave_pb2.DecideReply.FromString(got[1])
    answer = reply.response
    document = verify_decision(answer.decision_json, answer.signature, enclave.public_key,
                               expected={"call_id": ask.call_id, "args_digest": ask.arguments_digest})
    assert reply.call_id == ask.call_id and document["effective"] == "allow" and answer.permit
    assert any(raw.startswith(b'{"data":' + answer.decision_json) for raw in answer.audit_entries)
    await hop.send(frame(Kind.PING, b"beat"))
    assert await hop.read() == (Kind.PONG, b"beat")
    hop.close()


async def test_attest_advertises_the_hop_only_when_it_listens(tmp_path: Path) -> None:
    import grpc

    from cmcp_core.proto import enclave_pb2_grpc

    enclave = inprocess_enclave(BUNDLE, tmp_path)
    for decide_listen, offered in ((None, False), ("127.0.0.1:0", True)):
        server, port = await serve(enclave, "127.0.0.1:0", Metrics(), decide_listen=decide_listen)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                resp = await enclave_pb2_grpc.EnclaveStub(channel).Attest(
                    enclave_pb2.AttestRequest(nonce=b"n" * 32))
            assert (resp.decide_hop_port != 0) is offered
            assert resp.decide_hop_version == (VERSION if offered else 0)
            if offered:
                assert server.hop is not None and resp.decide_hop_port == server.hop.port
        finally:
            await server.stop(0)


@pytest.mark.parametrize("weakened", [False, True])
async def test_a_stranger_without_a_gateway_proof_is_refused_and_closed(
        live: Live, monkeypatch: pytest.MonkeyPatch, weakened: bool) -> None:
    """A key the initdata does not name, a missing proof, or a DECIDE before any proof: each is
    GATEWAY_UNAUTHENTICATED and the connection closes, no decision made. The weakened enclave
    (no proof check) lets the stranger in: the test would catch the hole."""
    enclave, _, port = live
    if weakened:
        monkeypatch.setattr(decide_hop, "check_proof", lambda *a, **k: "anyone")
    stranger = Ed25519PrivateKey.generate()
    outcomes = []
    hop = await RawHop.connect(port)
    await hop.handshake(stranger)
    outcomes.append(await hop.read())
    hop.close()
    hop = await RawHop.connect(port)
    await hop.hello()
    await hop.send(json_frame(Kind.PROOF, {"version": VERSION}))
    outcomes.append(await hop.read())
    hop.close()
    if weakened:
        assert all(o == (Kind.READY, b"") for o in outcomes)  # let in: the check above matters
        return
    for kind_payload in outcomes:
        assert kind_payload is not None and kind_payload[0] == Kind.ERROR
        assert json.loads(kind_payload[1])["code"] == "GATEWAY_UNAUTHENTICATED"
    hop = await RawHop.connect(port)
    await hop.hello()
    await hop.send(frame(Kind.DECIDE, decide_request(enclave).SerializeToString()))
    assert await hop.refusal() == "GATEWAY_UNAUTHENTICATED"
    assert "decision" not in {json.loads(raw)["kind"] for raw in carried(enclave)}


@pytest.mark.parametrize("weakened", [False, True])
async def test_a_proof_seen_on_one_connection_does_not_open_another(
        live: Live, monkeypatch: pytest.MonkeyPatch, weakened: bool) -> None:
    """The proof is bound to the connection's fresh nonce: a host that captured one cannot replay
    it. The weakened enclave (the same nonce every time) takes the replay."""
    _, _, port = live
    if weakened:
        monkeypatch.setattr(decide_hop.os, "urandom", lambda n: b"\0" * n)
    seen = await RawHop.connect(port)
    hello = await seen.hello()
    proof = make_proof(GATEWAY, rpc=PROOF_RPC, enclave_kid=hello["kid"],
                       request=b64url_decode(hello["nonce"]), now=time.time())
    seen.close()
    replay = await RawHop.connect(port)
    await replay.hello()
    await replay.send(json_frame(Kind.PROOF, {"version": VERSION, "proof": proof}))
    if weakened:
        assert await replay.read() == (Kind.READY, b"")
    else:
        assert await replay.refusal() == "GATEWAY_UNAUTHENTICATED"
    replay.close()


async def test_a_wrong_version_is_refused_with_a_code_and_closed(live: Live) -> None:
    _, _, port = live
    hop = await RawHop.connect(port)
    await hop.hello()
    await hop.send(json_frame(Kind.PROOF, {"version": VERSION + 1, "proof": "x"}))
    assert await hop.refusal() == "DECIDE_FRAME_INVALID"


async def test_an_oversized_length_prefix_closes_before_the_body(live: Live) -> None:
    """Only the five header bytes are sent: the enclave refuses on the prefix alone, so a peer
    cannot make it buffer a body of its choosing."""
    _, _, port = live
    hop = await RawHop.connect(port)
    await hop.handshake()
    assert await hop.read() == (Kind.READY, b"")
    await hop.send(HEADER.pack(decide_frames.MAX_REQUEST_FRAME + 1, Kind.DECIDE))
    assert await hop.refusal() == "DECIDE_FRAME_INVALID"


async def test_a_decide_frame_that_is_not_a_request_or_a_stray_kind_is_refused(live: Live) -> None:
    enclave, _, port = live
    for bad in (frame(Kind.DECIDE, b"\xff\xff\xff"), frame(Kind.HELLO, b"{}")):
        hop = await RawHop.connect(port)
        await hop.handshake()
        assert await hop.read() == (Kind.READY, b"")
        await hop.send(bad)
        assert await hop.refusal() == "DECIDE_FRAME_INVALID"
    assert "decision" not in {json.loads(raw)["kind"] for raw in carried(enclave)}


@pytest.mark.parametrize("weakened", [False, True])
async def test_connections_that_never_prove_anything_are_capped(
        live: Live, monkeypatch: pytest.MonkeyPatch, weakened: bool) -> None:
    """A stranger opens connections and sends nothing: past ``MAX_UNPROVEN`` waiting for a proof,
    the next is refused at once (``DECIDE_HOP_BUSY``), so they cannot pile up for their 10 s each;
    a gateway gets in again as soon as they are gone, and proven connections never count. The
    weakened enclave (no cap) keeps taking them, which the test catches."""
    enclave, server, port = live
    assert server.hop is not None
    cap = 4
    monkeypatch.setattr(decide_hop, "MAX_UNPROVEN", 1_000_000 if weakened else cap)
    gateway = await RawHop.connect(port)  # proven first: it must not count against the cap
    await gateway.handshake()
    assert await gateway.read() == (Kind.READY, b"")
    silent = [await RawHop.connect(port) for _ in range(cap)]
    for hop in silent:
        await hop.hello()
    extra = await RawHop.connect(port)
    if weakened:
        assert (await extra.hello())["kid"] == enclave.kid  # let in: the cap above matters
        return
    assert await extra.refusal() == "DECIDE_HOP_BUSY"
    await gateway.send(frame(Kind.DECIDE, decide_request(enclave).SerializeToString()))
    got = await gateway.read()
    assert got is not None and got[0] == Kind.REPLY  # the proven gateway is served throughout
    for hop in silent:
        hop.close()
    async with asyncio.timeout(5):
        while len(server.hop.connections) > 1:  # noqa: ASYNC110 - the listener offers no event to wait on
            await asyncio.sleep(0.01)
    again = await RawHop.connect(port)
    await again.handshake()
    assert await again.read() == (Kind.READY, b"")
    again.close()
    gateway.close()


@pytest.mark.parametrize("where", ["handshake", "frame"])
async def test_a_connection_cut_mid_frame_is_dropped(live: Live, where: str) -> None:
    enclave, server, port = live
    assert server.hop is not None
    hop = await RawHop.connect(port)
    if where == "handshake":
        await hop.hello()
        await hop.send(json_frame(Kind.PROOF, {"version": VERSION, "proof": "x" * 100})[:20])
    else:
        await hop.handshake()
        assert await hop.read() == (Kind.READY, b"")
        await hop.send(frame(Kind.DECIDE, decide_request(enclave).SerializeToString())[:30])
    hop.close()
    async with asyncio.timeout(5):
        while server.hop.connections:  # noqa: ASYNC110 - the listener offers no event to wait on
            await asyncio.sleep(0.01)
    assert "decision" not in {json.loads(raw)["kind"] for raw in carried(enclave)}


class GatedScheduler(DecisionScheduler):
    """The real scheduler, with every decision held until the test opens the gate (test code)."""

    def __init__(self, enclave: Enclave) -> None:
        super().__init__(enclave, processes=False)
        self.gate = asyncio.Event()

    def decides_at_once(self, principal: str, argument_bytes: int) -> bool:
        return False

    async def decide(self, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await super().decide(**kwargs)


@pytest.mark.parametrize("weakened", [False, True])
async def test_a_flood_past_the_in_flight_bound_stops_the_enclave_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weakened: bool) -> None:
    """More requests than the bound, none decided yet: the enclave holds the bound's worth in
    flight, queues at most about as many more, and stops reading the rest (they wait in TCP);
    once decisions finish every request is answered. The weakened connection (a bound it never
    reaches) takes the whole flood into memory, which the test catches."""
    from cmcp_enclave import server as enclave_server

    bound = 8
    monkeypatch.setattr(enclave_server, "MAX_IN_FLIGHT_PER_STREAM", bound)
    enclave = inprocess_enclave(BUNDLE, tmp_path, gateway_keys=[initdata_value(GATEWAY)])
    scheduler = GatedScheduler(enclave)
    server, _ = await serve(enclave, "127.0.0.1:0", Metrics(), scheduler, decide_listen="127.0.0.1:0")
    assert server.hop is not None
    try:
        hop = await RawHop.connect(server.hop.port)
        await hop.handshake()
        assert await hop.read() == (Kind.READY, b"")
        (connection,) = server.hop.connections
        if weakened:
            connection.max_waiting = 1_000_000
        flood = 200
        asks = [decide_request(enclave, text=f"t{i}") for i in range(flood)]
        hop.writer.write(b"".join(frame(Kind.DECIDE, a.SerializeToString()) for a in asks))
        async with asyncio.timeout(5):
            while len(connection.waiting) < bound and connection.transport.is_reading():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the loop takes what it may take
        if weakened:
            while len(connection.waiting) < flood - bound - 1:  # noqa: ASYNC110 - all of it, eventually
                await asyncio.sleep(0.01)
            assert connection.transport.is_reading()
            return
        assert not connection.transport.is_reading()
        read_chunk = 64 * 1024 // len(frame(Kind.DECIDE, asks[0].SerializeToString())) + 1
        assert len(connection.waiting) <= bound + read_chunk
        scheduler.gate.set()
        answered = set()
        while len(answered) < flood:
            got = await hop.read()
            assert got is not None and got[0] == Kind.REPLY
            answered.add(enclave_pb2.DecideReply.FromString(got[1]).call_id)
        assert answered == {a.call_id for a in asks}
        hop.close()
    finally:
        scheduler.gate.set()
        await server.stop(0)


async def test_answering_that_fails_closes_the_connection(live: Live,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected failure inside the enclave ends the connection at once (the gateway fails its
    waiting calls TEE_UNAVAILABLE now, not at their deadline); it never leaves it open and mute."""
    from cmcp_enclave.server import EnclaveService

    async def broken_reply(self: EnclaveService, request: Any) -> Any:
        raise RuntimeError("a bug on the decision path")

    monkeypatch.setattr(EnclaveService, "_reply", broken_reply)
    enclave, _, port = live
    hop = await RawHop.connect(port)
    await hop.handshake()
    assert await hop.read() == (Kind.READY, b"")
    await hop.send(frame(Kind.DECIDE, decide_request(enclave).SerializeToString()))
    assert await hop.read() is None
