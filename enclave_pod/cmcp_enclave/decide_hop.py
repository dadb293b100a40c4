"""The enclave's lean decision hop: ``Decide`` as length-prefixed frames on a plain TCP listener.

A second listener (``--decide-listen``, off by default) beside the gRPC server, serving only
decisions (with the outcomes they carry) in the frames of :mod:`cmcp_core.decide_frames`; why:
docs/adr/0024-lean-decision-hop.md. Every request goes through the same code as the gRPC
``DecideStream`` (:meth:`cmcp_enclave.server.EnclaveService.answer_stream`: the same scheduler,
audit entries and signed decisions); only the transport differs.

Each connection first proves it is a gateway the measured initdata names: the same
:mod:`cmcp_core.gateway_identity` check as :mod:`cmcp_enclave.gateway_auth`, once per connection,
bound to this enclave's key id and a nonce this connection's ``HELLO`` chose. Anything else first
(or a wrong version, or no proof within ``HANDSHAKE_SECONDS``) is refused with a coded ``ERROR``
frame and the connection closes before a decision is read. At most ``MAX_UNPROVEN`` connections may
wait for their proof at once; a further one is refused at once (``DECIDE_HOP_BUSY``), so
connections that never prove anything cannot hold the enclave's memory or descriptors. Malformed
frames are ``DECIDE_FRAME_INVALID``. While ``MAX_IN_FLIGHT_PER_STREAM``
requests wait undecided the connection stops reading (``pause_reading``): a flood holds its
sender in TCP, not the enclave's memory.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from cmcp_core.decide_frames import (
    MAX_REQUEST_FRAME,
    PROOF_RPC,
    VERSION,
    FramedProtocol,
    Kind,
    error_frame,
    frame,
    json_frame,
    json_payload,
)
from cmcp_core.digest import b64url
from cmcp_core.errors import CmcpError, Code
from cmcp_core.gateway_identity import check_proof
from cmcp_core.proto import enclave_pb2
from cmcp_enclave.log import log

HANDSHAKE_SECONDS = 10.0
MAX_UNPROVEN = 64  # connections waiting for their gateway proof at once
NONCE_BYTES = 32

AnswerStream = Callable[[AsyncIterator[Any], Callable[[Any], Awaitable[None]]], Coroutine[Any, Any, None]]


class HopConnection(FramedProtocol):
    """One gateway connection: handshake, then requests queued for ``answer_stream``."""

    max_frame = MAX_REQUEST_FRAME

    def __init__(self, answer_stream: AnswerStream, trusted: Mapping[str, Ed25519PublicKey], kid: str,
                 max_waiting: int, on_refused: Callable[[Code], None] | None = None,
                 clock: Callable[[], float] = time.time, registry: set[HopConnection] | None = None) -> None:
        super().__init__()
        self.registry = registry if registry is not None else set()  # the listener's open connections
        self.answer_stream, self.trusted, self.kid = answer_stream, trusted, kid
        self.max_waiting, self.on_refused, self.clock = max_waiting, on_refused, clock
        self.nonce = os.urandom(NONCE_BYTES)
        self.ready = False
        self.waiting: collections.deque[Any] = collections.deque()  # read, not yet taken
        self._wakeup: asyncio.Future[None] | None = None
        self._answering: asyncio.Task[None] | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if sum(not c.ready for c in self.registry) >= MAX_UNPROVEN:
            self.refuse(Code.DECIDE_HOP_BUSY, f"{MAX_UNPROVEN} connections already await a gateway proof")
            return
        self.registry.add(self)
        self.send(json_frame(Kind.HELLO, {"version": VERSION, "kid": self.kid, "nonce": b64url(self.nonce)}))
        self._handshake_timer = asyncio.get_running_loop().call_later(
            HANDSHAKE_SECONDS, self.refuse, Code.GATEWAY_UNAUTHENTICATED, "no gateway proof in time")

    def refuse(self, code: Code, detail: str) -> None:
        """Say why in a coded frame, then close (no further frame is read)."""
        if self.closed:
            return
        if self.on_refused is not None:
            self.on_refused(code)
        self.send(error_frame(code, detail))
        self.close()

    def frame_too_large(self, length: int) -> None:
        self.refuse(Code.DECIDE_FRAME_INVALID, f"a frame of {length} bytes exceeds {self.max_frame}")

    def frame_received(self, kind: int, payload: bytes) -> None:
        if not self.ready:
            self._handshake(kind, payload)
        elif kind == Kind.DECIDE:
            try:
                request = enclave_pb2.DecideRequest.FromString(payload)
            except DecodeError:
                self.refuse(Code.DECIDE_FRAME_INVALID, "a DECIDE frame is not a DecideRequest")
                return
            self.waiting.append(request)
            if len(self.waiting) >= self.max_waiting and self.transport is not None:
                self.transport.pause_reading()
            self._wake()
        elif kind == Kind.PING:
            self.send(frame(Kind.PONG, payload))
        elif kind != Kind.PONG:
            self.refuse(Code.DECIDE_FRAME_INVALID, f"frame kind {kind} is not expected from a gateway")

    def _handshake(self, kind: int, payload: bytes) -> None:
        try:
            if kind != Kind.PROOF:
                raise CmcpError(Code.GATEWAY_UNAUTHENTICATED,
                                "a decide hop connection starts with a gateway proof")
            doc = json_payload(payload)
            if doc.get("version") != VERSION:
                raise CmcpError(Code.DECIDE_FRAME_INVALID,
                                f"decide hop version {doc.get('version')!r} is not {VERSION}")
            if self.trusted:  # none in the initdata: a development set-up (see gateway_auth)
                proof = doc.get("proof")
                check_proof(proof if isinstance(proof, str) else None, self.trusted, rpc=PROOF_RPC,
                            enclave_kid=self.kid, request=self.nonce, now=self.clock())
        except CmcpError as exc:
            self.refuse(exc.code, exc.detail)
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.ready = True
        self.send(frame(Kind.READY))
        answering = self.answer_stream(self._requests(), self._write)
        self._answering = asyncio.get_running_loop().create_task(answering)
        self._answering.add_done_callback(self._answering_ended)

    def _answering_ended(self, task: asyncio.Task[None]) -> None:
        """Answering stops only with the connection; if it fails on its own, the connection
        closes too, so the gateway's waiting calls fail now instead of at their deadline."""
        if not task.cancelled() and task.exception() is not None:
            log("decide hop answering failed", level="error", detail=repr(task.exception()))
        self.close()

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            while self.waiting:
                request = self.waiting.popleft()
                if len(self.waiting) == self.max_waiting // 2 and self.transport is not None:
                    self.transport.resume_reading()  # (a closing transport ignores it)
                yield request
            if self.closed:
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def _wake(self) -> None:
        waiter, self._wakeup = self._wakeup, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _write(self, reply: Any) -> None:
        """A reply out; waits while the gateway is not reading. A reply for a connection that is
        gone is dropped: its carried outcomes are requeued by the gateway, which never saw it."""
        await self.writable()
        self.send(frame(Kind.REPLY, reply.SerializeToString()))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.registry.discard(self)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.waiting.clear()  # not taken: the gateway fails those calls TEE_UNAVAILABLE
        self._wake()


class DecideHop:
    """The listener; :meth:`close` ends it and every connection (answers in flight are lost,
    and their callers fail closed)."""

    def __init__(self, server: asyncio.Server, connections: set[HopConnection]) -> None:
        self.server = server
        self.connections = connections

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        for connection in list(self.connections):
            connection.close()
        await self.server.wait_closed()


async def listen(address: str, answer_stream: AnswerStream, trusted: Mapping[str, Ed25519PublicKey],
                 kid: str, max_waiting: int, on_refused: Callable[[Code], None] | None = None) -> DecideHop:
    """Bind ``HOST:PORT`` (port 0 picks a free one) and serve the hop there."""
    host, port = address.rsplit(":", 1)
    connections: set[HopConnection] = set()

    def accept() -> HopConnection:
        return HopConnection(answer_stream, trusted, kid, max_waiting, on_refused, registry=connections)

    server = await asyncio.get_running_loop().create_server(accept, host.strip("[]"), int(port))
    return DecideHop(server, connections)
