"""A handshake-era session's GET stream of resource updates (docs/adr/0018).

In front of a 2026-07-28 upstream, which has no ``resources/subscribe``, the gateway keeps what
each session's agent subscribed to and follows it upstream with a ``subscriptions/listen``
request of its own, made through the pipeline like the agent's would be: decided by the enclave
and permitted by the guard.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import orjson

from cmcp_core.errors import CmcpError
from cmcp_core.mcp_target import LISTEN
from cmcp_gateway import pipeline
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.routes import RouteRuntime
from cmcp_gateway.sessions import McpSession

log = logging.getLogger("cmcp.gateway")
KEEPALIVE_SECONDS = 15.0  # an idle GET stream sends a comment this often (finds agents gone)
RELISTEN_SECONDS = 1.0  # the least time between two listens of one GET stream


class SessionEvents:
    """A handshake-era session's GET stream in front of a 2026-07-28 upstream: update
    notifications for the resources its agent subscribed to, heard through a
    ``subscriptions/listen`` stream that the enclave decides and the guard permits like any
    request, opened again (and decided again) whenever the subscriptions change or it ends.
    Only ``notifications/resources/updated`` reaches the agent here."""

    def __init__(self, runtime: RouteRuntime, session: McpSession) -> None:
        self._runtime = runtime
        self._session = session
        session.listening = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        session = self._session
        while not session.ended:
            session.subscriptions_changed.clear()
            uris = sorted(session.subscriptions)
            if uris:
                async for event in self._listen(uris):
                    yield event
            if not await _changed_within(session, RELISTEN_SECONDS if uris else KEEPALIVE_SECONDS):
                session.last_used = time.monotonic()  # an open GET stream keeps its session
                yield b": keepalive\r\n\r\n"

    async def _listen(self, uris: list[str]) -> AsyncIterator[bytes]:
        """One listen stream upstream, until it ends or the subscriptions change."""
        session = self._session
        request = {"notifications": {"resourceSubscriptions": uris}}
        try:
            answer = await pipeline.unbroken(pipeline.call(
                self._runtime, session, f"cmcp-listen-{uuid.uuid4().hex}", LISTEN, request, streaming=True))
        except (FailedRequest, CmcpError) as exc:
            code = exc.code if isinstance(exc, FailedRequest) else str(exc.code)
            log.warning("listen refused", extra={"session_id": session.id, "code": code})
            return
        events = answer.events
        if events is None:
            return
        changed = asyncio.ensure_future(session.subscriptions_changed.wait())
        iterator = aiter(events)
        following: asyncio.Future[bytes] | None = None  # the next event's read, kept across keepalives
        try:
            while True:
                if following is None:
                    following = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({following, changed}, timeout=KEEPALIVE_SECONDS,
                                             return_when=asyncio.FIRST_COMPLETED)
                if following not in done:
                    if changed in done:
                        return
                    session.last_used = time.monotonic()
                    yield b": keepalive\r\n\r\n"
                    continue
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                following = None
                if _is_update(event):
                    yield event
        finally:
            changed.cancel()
            if following is not None:
                following.cancel()  # the read still pending when the subscriptions changed or the agent left
            await events.aclose()

    async def aclose(self) -> None:
        self._session.listening = False


async def _changed_within(session: McpSession, seconds: float) -> bool:
    """Whether the session's subscriptions change within ``seconds``. ``asyncio.timeout``, not
    ``wait_for``: on Python 3.11, ``wait_for`` swallows a cancellation that arrives in the loop
    turn its event is set (an agent that unsubscribes as it leaves), and this stream went on."""
    try:
        async with asyncio.timeout(seconds):
            await session.subscriptions_changed.wait()
    except TimeoutError:
        return False
    return True


def _is_update(event: bytes) -> bool:
    """Whether one SSE event of a listen stream is a resource update (the rest is the stream's
    own: its acknowledgement and its end)."""
    _, _, data = event.partition(b"data: ")
    try:
        message = orjson.loads(data.strip())
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("method") == "notifications/resources/updated"
