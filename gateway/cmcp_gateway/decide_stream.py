"""Decisions over one long-lived ``DecideStream`` per enclave endpoint.

A unary gRPC call sets up an HTTP/2 stream, headers and a status per call, which costs more
round trip and CPU on both sides than a message on an open stream, so ``Decide`` travels as
stream messages (why: docs/adr/0003-decide-stream.md). The stream is opened on first use and
reopened after it breaks; replies are matched on ``call_id``.

Fail-closed: no reply within the deadline, or a stream that breaks while calls wait, is
``TEE_UNAVAILABLE`` for each waiting call; a refusal reply relays the enclave's registered code.
Callers write in turn (one write in flight per gRPC call). A write still blocked at the deadline
means the enclave stopped reading: gRPC then cancels the stream, which fails the other waiting
calls too, as it should. (A request iterator fed by a queue would isolate callers from that but
costs task switches on every message; see the ADR.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from cmcp_core.errors import CmcpError, Code


def answered(reply: Any) -> Any:
    """A ``DecideReply``'s decision, or its refusal as the enclave's registered code (an unknown
    code: ``TEE_UNAVAILABLE``, as the unary path). Shared by the stream and the lean hop."""
    if reply.error_code:
        try:
            code = Code(reply.error_code)
        except ValueError:
            code = Code.TEE_UNAVAILABLE  # not a code we know: closed
        raise CmcpError(code, f"enclave refused Decide: {reply.error_detail}")
    return reply.response


class DecisionStream:
    def __init__(self, stub: Any, on_broken: Callable[[], None], deadline: float) -> None:
        self._stub = stub
        self._deadline = deadline  # seconds a decision may take, from hand-over to reply
        self._on_broken = on_broken  # the endpoint's owner distrusts it and re-attests
        self._call: Any = None
        self._writing = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[Any]] = {}

    async def decide(self, request: Any) -> Any:
        """The enclave's ``DecideResponse`` for ``request``, or a coded ``CmcpError``."""
        call = self._open()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call_id = request.call_id
        self._waiting[call_id] = reply
        try:
            async with asyncio.timeout(self._deadline):
                async with self._writing:
                    await call.write(request)
                answer = await reply
        except TimeoutError:
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave Decide exceeded {self._deadline}s") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:  # the stream is gone
            raise CmcpError(Code.TEE_UNAVAILABLE, f"enclave decision stream broke: {exc}") from None
        finally:
            if self._waiting.get(call_id) is reply:
                del self._waiting[call_id]
        return answered(answer)

    def _open(self) -> Any:
        if self._call is None:
            self._call = self._stub.DecideStream()
            self._reader = asyncio.get_running_loop().create_task(self._read(self._call))
        return self._call

    async def _read(self, call: Any) -> None:
        failure = "the enclave ended the stream"
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                waiter = self._waiting.get(reply.call_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except grpc.aio.AioRpcError as exc:
            failure = exc.code().name
        except asyncio.CancelledError:
            failure = "the stream was closed"
        # No await from here on: waiters registered so far belong to this stream, later ones
        # to the next one.
        if self._call is call:
            self._call = None
            self._on_broken()
        error = CmcpError(Code.TEE_UNAVAILABLE, f"enclave decision stream broke: {failure}")
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)

    async def close(self) -> None:
        call, reader = self._call, self._reader
        self._call = self._reader = None
        if call is not None:
            call.cancel()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

