"""Decisions over the enclave's lean decision hop: frames on one long-lived TCP connection.

The same interface as :class:`cmcp_gateway.decide_stream.DecisionStream` (``decide(request)``),
used instead of it for an endpoint that was attested over gRPC and whose ``Attest`` advertised the
hop (:mod:`cmcp_core.decide_frames`; why: docs/adr/0024-lean-decision-hop.md). The answers are the
same ``DecideReply`` messages, checked by the pool exactly as the stream's.

The connection is opened on first use after attestation (logged, never silent): the enclave's
``HELLO`` must name the attested key id and this version; the gateway answers with its identity
proof over the enclave's nonce. Replies are matched on ``call_id`` in any order.

Fail-closed: a call with no reply within the deadline fails alone (``TEE_UNAVAILABLE``); a
connection that breaks (reset, EOF, an ``ERROR`` frame, a malformed or oversized frame, a ping
unanswered for ``PONG_SECONDS``) fails every waiting call with ``TEE_UNAVAILABLE`` and calls
``on_broken`` (the pool distrusts the endpoint and re-attests it before the next connection).
At most ``MAX_IN_FLIGHT`` calls wait at the enclave; the next waits for a slot within its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from cmcp_core.decide_frames import (
    MAX_IN_FLIGHT,
    MAX_REPLY_FRAME,
    PROOF_RPC,
    VERSION,
    FramedProtocol,
    Kind,
    frame,
    json_frame,
    json_payload,
)
from cmcp_core.digest import b64url_decode
from cmcp_core.errors import CmcpError, Code
from cmcp_core.gateway_identity import make_proof
from cmcp_core.proto import enclave_pb2
from cmcp_gateway.decide_stream import answered

log = logging.getLogger("cmcp.gateway")
IDLE_SECONDS = 10.0  # a ping after this long without a frame from the enclave
PONG_SECONDS = 5.0  # ... and no frame within this long after it: the connection is broken


class _Connection(FramedProtocol):
    """One connection's frames; everything that goes wrong ends in :meth:`fail`."""

    max_frame = MAX_REPLY_FRAME

    def __init__(self, on_failed: Callable[[_Connection], None]) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.on_failed = on_failed
        self.hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.waiting: dict[str, asyncio.Future[Any]] = {}
        self.failure: CmcpError | None = None
        self._heard = loop.time()
        self._ping_sent: float | None = None
        self._beat_timer = loop.call_later(IDLE_SECONDS, self._beat)

    def data_received(self, data: bytes) -> None:
        self._heard = self.loop.time()
        super().data_received(data)

    def frame_received(self, kind: int, payload: bytes) -> None:
        if kind == Kind.REPLY and self.ready.done():
            try:
                reply = enclave_pb2.DecideReply.FromString(payload)
            except DecodeError:
                self.fail("a REPLY frame is not a DecideReply")
                return
            waiter = self.waiting.get(reply.call_id)
            if waiter is not None and not waiter.done():  # an answer for nobody is dropped
                waiter.set_result(reply)
        elif kind == Kind.HELLO and not self.hello.done():
            try:
                self.hello.set_result(json_payload(payload))
            except CmcpError as exc:
                self.fail(exc.detail)
        elif kind == Kind.READY and self.hello.done() and not self.ready.done():
            self.ready.set_result(None)
        elif kind == Kind.PING:
            self.send(frame(Kind.PONG, payload))
        elif kind == Kind.ERROR:
            try:
                doc = json_payload(payload)
                self.fail(f"the enclave refused: {doc.get('code')}: {doc.get('detail')}")
            except CmcpError:
                self.fail("the enclave refused (unreadable ERROR frame)")
        elif kind != Kind.PONG:
            self.fail(f"unexpected frame kind {kind}")

    def frame_too_large(self, length: int) -> None:
        self.fail(f"a frame of {length} bytes exceeds {self.max_frame}")

    def _beat(self) -> None:
        """Ping after ``IDLE_SECONDS`` of silence; no frame ``PONG_SECONDS`` after it: broken."""
        if self.closed:
            return
        now = self.loop.time()
        if self._ping_sent is not None and self._heard < self._ping_sent:
            if now - self._ping_sent >= PONG_SECONDS:
                self.fail(f"no answer to a ping in {PONG_SECONDS} s")
                return
            delay = PONG_SECONDS - (now - self._ping_sent)
        elif now - self._heard >= IDLE_SECONDS:
            self._ping_sent = now
            self.send(frame(Kind.PING))
            delay = PONG_SECONDS
        else:
            self._ping_sent = None
            delay = IDLE_SECONDS - (now - self._heard)
        self._beat_timer = self.loop.call_later(delay, self._beat)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"the connection ended: {exc}" if exc else "the enclave closed the connection")
        super().connection_lost(exc)

    def fail(self, why: str) -> None:
        """Close, fail every waiting call and the handshake (once), tell the owner."""
        if self.failure is not None:
            return
        self.failure = CmcpError(Code.TEE_UNAVAILABLE, f"enclave decide hop broke: {why}")
        self._beat_timer.cancel()
        self.close()
        self.resume_writing()
        futures: list[asyncio.Future[Any]] = [self.hello, self.ready, *self.waiting.values()]
        for future in futures:
            if not future.done():
                future.set_exception(self.failure)
                future.exception()  # retrieved: a handshake nobody awaits must not warn
        self.on_failed(self)


class DecisionHop:
    def __init__(self, host: str, port: int, identity: Ed25519PrivateKey | None,
                 enclave_kid: Callable[[], str | None], on_broken: Callable[[], None], deadline: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.host, self.port = host, port
        self._identity = identity  # signs the connection's proof (None: the enclave trusts anyone)
        self._enclave_kid = enclave_kid  # the attested enclave's key id (None: not attested now)
        self._on_broken = on_broken  # the endpoint's owner distrusts it and re-attests
        self._deadline = deadline  # seconds a decision may take, from hand-over to reply
        self._clock = clock
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def decide(self, request: Any) -> Any:
        """The enclave's ``DecideResponse`` for ``request``, or a coded ``CmcpError``."""
        call_id = request.call_id
        connection: _Connection | None = None
        reply: asyncio.Future[Any] | None = None
        try:
            async with asyncio.timeout(self._deadline), self._slots:
                connection = await self._connected()
                reply = connection.loop.create_future()
                connection.waiting[call_id] = reply
                await connection.writable()
                if connection.failure is not None:
                    raise connection.failure
                connection.send(frame(Kind.DECIDE, request.SerializeToString()))
                answer = await reply
        except TimeoutError:
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave Decide exceeded {self._deadline}s") from None
        finally:
            if connection is not None and connection.waiting.get(call_id) is reply:
                del connection.waiting[call_id]
        return answered(answer)

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.failure is None and connection.ready.done():
            return connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(_retrieved)  # its callers may all have given up
        return await asyncio.shield(self._connecting)  # a caller that gives up does not stop it

    async def _connect(self) -> _Connection:
        kid = self._enclave_kid()
        if kid is None:
            raise CmcpError(Code.TEE_UNAVAILABLE, "the enclave is not attested")
        log.info("decide hop connecting", extra={"endpoint": f"{self.host}:{self.port}", "kid": kid})
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(self._new_connection, self.host, self.port)
        except OSError as exc:
            self._on_broken()
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave decide hop unreachable: {exc}") from None
        hello = await connection.hello
        nonce_text = hello.get("nonce")
        if hello.get("version") != VERSION or hello.get("kid") != kid or not isinstance(nonce_text, str):
            connection.fail(f"the enclave's hello ({hello.get('version')!r}, {str(hello.get('kid'))[:16]!r}) "
                            f"is not version {VERSION} of the attested enclave")
            raise _failure(connection)
        try:
            nonce = b64url_decode(nonce_text)
        except ValueError:
            connection.fail("the enclave's nonce is malformed")
            raise _failure(connection) from None
        proof = (make_proof(self._identity, rpc=PROOF_RPC, enclave_kid=kid, request=nonce, now=self._clock())
                 if self._identity is not None else "")
        connection.send(json_frame(Kind.PROOF, {"version": VERSION, "proof": proof}))
        await connection.ready
        return connection

    def _new_connection(self) -> _Connection:
        """The connection being opened is this hop's from the start: if it breaks before the
        handshake completes, the endpoint is distrusted as for any other break."""
        self._connection = _Connection(self._failed)
        return self._connection

    def _failed(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None
            log.warning("decide hop broke", extra={"endpoint": f"{self.host}:{self.port}",
                                                   "detail": _failure(connection).detail})
            self._on_broken()

    async def close(self) -> None:
        connecting, connection = self._connecting, self._connection
        self._connecting = self._connection = None
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        if connection is not None:
            connection.close()


def _failure(connection: _Connection) -> CmcpError:
    return connection.failure or CmcpError(Code.TEE_UNAVAILABLE, "enclave decide hop broke")


def _retrieved(task: asyncio.Task[_Connection]) -> None:
    if not task.cancelled():
        task.exception()
