"""The lean decision hop's wire format, shared by the enclave's listener and the gateway's client.

A gRPC stream message costs the gateway and the enclave several times the CPU and latency of a
length-prefixed frame on a plain TCP connection (docs/adr/0024-lean-decision-hop.md), so
``Decide`` may travel as frames: ``u32 length | u8 kind | payload``, ``length`` counting the kind
byte and the payload, big-endian. Decisions are the same protobuf messages as on gRPC
(``DecideRequest`` / ``DecideReply``), so the gateway checks them exactly as it does there.

A connection starts with a handshake: the enclave's ``HELLO`` (version, key id, a fresh nonce),
the gateway's ``PROOF`` (version, a :mod:`cmcp_core.gateway_identity` proof for
:data:`PROOF_RPC` over the nonce), the enclave's ``READY``. A refusal is an ``ERROR`` frame
(a registered code) and the connection closes. A length prefix over the reader's limit closes the
connection before its body is read, so a peer cannot make the other side buffer more than that.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from typing import Any, cast

from cmcp_core.errors import CmcpError, Code

VERSION = 1
PROOF_RPC = "DecideHop"  # the rpc name a connection's gateway proof is bound to
# Larger requests go as unary gRPC calls: a message the enclave refuses for size ends the whole
# stream (or connection), and must not take the other callers' decisions with it.
STREAM_MESSAGE_MAX = 512 * 1024
# Decisions one connection (gRPC DecideStream or hop) may have waiting at the enclave at once;
# the gateway holds further callers, within their deadline, until one is answered.
MAX_IN_FLIGHT = 256
MAX_REQUEST_FRAME = STREAM_MESSAGE_MAX + 1  # a request frame: its kind byte and at most this much
MAX_REPLY_FRAME = 1024 * 1024  # an answer may carry audit entries: the enclave's gRPC send cap
HEADER = struct.Struct(">IB")


class Kind(enum.IntEnum):
    HELLO = 1  # enclave -> gateway: {"version", "kid", "nonce"}
    PROOF = 2  # gateway -> enclave: {"version", "proof"}
    READY = 3  # enclave -> gateway: the proof holds; decisions may flow
    DECIDE = 4  # gateway -> enclave: DecideRequest
    REPLY = 5  # enclave -> gateway: DecideReply
    PING = 6
    PONG = 7
    ERROR = 8  # either way: {"code", "detail"}, then the sender closes


def frame(kind: Kind, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) + 1, kind) + payload


def json_frame(kind: Kind, doc: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(doc, separators=(",", ":")).encode())


def error_frame(code: Code, detail: str) -> bytes:
    return json_frame(Kind.ERROR, {"code": code.value, "detail": detail})


def json_payload(payload: bytes) -> dict[str, Any]:
    """A handshake or error frame's document; ``DECIDE_FRAME_INVALID`` when it is not one."""
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise CmcpError(Code.DECIDE_FRAME_INVALID, "a decide hop handshake frame is not a JSON object")
    return doc


class FramedProtocol(asyncio.Protocol):
    """Splits the byte stream into frames for :meth:`frame_received`, refuses oversized ones
    (:meth:`frame_too_large`, before the body is read) and tracks the transport's write buffer
    (:meth:`writable`), so a writer waits instead of growing it without bound."""

    max_frame = MAX_REQUEST_FRAME

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._writable: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while not self.closed and len(buffer) - start >= HEADER.size:
            length, kind = HEADER.unpack_from(buffer, start)
            if length > self.max_frame or length < 1:
                self.frame_too_large(length)
                return
            end = start + 4 + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[start + HEADER.size:end])
            start = end
            self.frame_received(kind, payload)
        del buffer[:start]

    def frame_received(self, kind: int, payload: bytes) -> None:
        raise NotImplementedError

    def frame_too_large(self, length: int) -> None:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def writable(self) -> None:
        """Returns once the transport takes more (at once unless the peer stopped reading)."""
        while self._writable is not None and not self.closed:
            await asyncio.shield(self._writable)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
