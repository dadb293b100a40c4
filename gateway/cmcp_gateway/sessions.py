"""The gateway's MCP session table: open, look up, forget, close at the enclave, reap when idle.

A stateful session is opened by ``initialize`` and named by ``Mcp-Session-Id``; stateless
requests (2026-07-28 clients, or no ``Mcp-Session-Id``) share one implicit session per agent
and route. The enclave mints every session id (``OpenSession``; its owner is in the id, see
:mod:`cmcp_core.session_id`) and holds the session's chain tip; closing it there returns the
session's signed Trust Record (with ``trust_record_dir``: ``<id>.json``, and beside GPUs the
envelopes it names in ``<id>.gpu-evidence.json``; untrusted storage, both are checked offline).
The table is a cache, not the truth: a session this replica never saw (opened on another
replica, or before a restart) is adopted on first use, and the enclave that holds it judges
whether it exists and is this agent's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cmcp_core.digest import tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import (
    GPU_EVIDENCE_FIELD,
    GPU_EVIDENCE_SUFFIX,
    gpu_evidence_file,
    gpu_evidence_items,
)
from cmcp_gateway.pinning import Pin
from cmcp_gateway.routes import RouteRuntime

log = logging.getLogger("cmcp.gateway")
# A close the enclave did not answer (unreachable, a GPU that could not attest, not attested right
# now) is asked again on every refresh for this long; the enclave closes once and answers a repeat
# with the same record, so a retry never forks one.
CLOSE_RETRY_SECONDS = 600.0


@dataclass
class McpSession:
    id: str
    agent: str
    route: str
    pin: Pin
    stateful: bool
    last_used: float = field(default_factory=time.monotonic)
    # the agent's latest access token the enclave proved for ``agent`` (OAuth routes); every
    # call to the enclave carries one, and any of the agent's valid tokens proves the same principal
    access_token: str = ""
    # the level this (handshake-era) session's agent set with an allowed ``logging/setLevel``;
    # stamped as the per-request log opt-in on what the gateway forwards for it (2026-07-28)
    log_level: str = ""
    # what this (handshake-era) session's agent can be asked (sampling, elicitation, roots), as it
    # declared in ``initialize``; told to a 2026-07-28 upstream with each request
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    # input requests relayed to the agent on a call's stream, by the JSON-RPC id the gateway gave
    # them: the agent's answer (a JSON-RPC response it POSTs) resolves the future
    awaiting: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    # resources this (handshake-era) session's agent subscribed to, each decided by the enclave;
    # in front of a 2026-07-28 upstream its GET stream follows them with subscriptions/listen
    subscriptions: set[str] = field(default_factory=set)
    subscriptions_changed: asyncio.Event = field(default_factory=asyncio.Event)
    listening: bool = False  # the session's GET stream is open
    ended: bool = False  # closed or forgotten here: its GET stream ends

    def end(self) -> None:
        self.ended = True
        self.subscriptions_changed.set()

    def follow(self, uri: str, on: bool) -> None:
        """Subscribe to (``on``) or unsubscribe from ``uri``; the GET stream re-listens."""
        if on:
            self.subscriptions.add(uri)
        else:
            self.subscriptions.discard(uri)
        self.subscriptions_changed.set()


@dataclass
class _Unclosed:
    """A session whose close failed: asked again until ``until`` (monotonic)."""

    session: McpSession
    reason: str
    until: float
    error: CmcpError  # the last answer


def _given_up(unclosed: _Unclosed) -> None:
    """The one line an operator looks for: this session has no Trust Record and will not get one
    from this gateway (its entries are in the audit store; the enclave's ledger shows it open)."""
    log.error("session left without a Trust Record",
              extra={"session_id": unclosed.session.id, "route": unclosed.session.route,
                     "code": str(unclosed.error.code), "detail": unclosed.error.detail})


class SessionTable(Mapping[str, McpSession]):
    """Open sessions by id (a read-only mapping; changed only through the methods).

    Bounded twice: in total, and per agent, so one agent's flood of ``initialize`` runs into its
    own limit long before it can lock every other agent out of the table."""

    def __init__(self, max_sessions: int, idle_seconds: float, trust_record_dir: str | None,
                 max_sessions_per_agent: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_sessions_per_agent = max_sessions_per_agent or max_sessions
        self.idle_seconds = idle_seconds
        self.trust_record_dir = trust_record_dir  # untrusted storage is fine: the record is signed
        self._by_id: dict[str, McpSession] = {}
        self._implicit: dict[tuple[str, str], str] = {}  # (route, agent) -> session id
        self._opening: dict[tuple[str, str], asyncio.Future[McpSession]] = {}  # implicit ones under way
        self._per_agent: dict[str, int] = {}
        self._opening_slots: set[object] = set()  # opens waiting for their enclave
        self._unclosed: dict[str, _Unclosed] = {}  # closes to ask again (retry_closes), oldest first

    def __getitem__(self, session_id: str) -> McpSession:
        return self._by_id[session_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def find(self, session_id: str | None) -> McpSession | None:
        """The open session named ``session_id``, if any (a plain dict lookup: the hot path)."""
        return self._by_id.get(session_id) if session_id else None

    async def open(self, runtime: RouteRuntime, agent: str, stateful: bool,
                   access_token: str = "") -> McpSession:
        """A new session at the enclave that owns ``agent`` (rendezvous on the principal), under
        the id that enclave minted. The slot is taken before the enclave is asked, so a flood of
        concurrent opens cannot overshoot the limits."""
        self._check_room(agent)
        self._per_agent[agent] = self._per_agent.get(agent, 0) + 1
        slot = object()
        self._opening_slots.add(slot)
        try:
            pin = await runtime.pool.pick(agent)  # the principal's enclave: every replica picks the same
            session_id = await runtime.pool.open_session(pin, agent, access_token)
        except BaseException:
            self._release(agent)
            raise
        finally:
            self._opening_slots.discard(slot)
        session = McpSession(session_id, agent, runtime.config.name, pin, stateful, access_token=access_token)
        self._by_id[session_id] = session
        return session

    async def adopt(self, runtime: RouteRuntime, session_id: str, agent: str,
                    access_token: str = "") -> McpSession:
        """A session this replica never saw, for the agent of this request.

        The id only says where to look (:func:`pinning.owner`; ``SESSION_LOST`` if that enclave
        is not attested any more). Whether the session exists, is open and belongs to ``agent``
        is the enclave's answer to a ``ListTools`` for it (``SESSION_UNKNOWN``,
        ``SESSION_CLOSED``, ``SESSION_PRINCIPAL_MISMATCH`` otherwise): the id alone is never
        trusted. Adopted sessions count against the same per-agent and total limits."""
        self._check_room(agent)
        pin = await runtime.pool.owner(session_id, agent)
        await runtime.pool.list_tools(pin, session_id, agent, access_token)
        known = self._by_id.get(session_id)
        if known is not None:  # adopted meanwhile by a concurrent request: one entry per session
            if known.agent != agent:
                raise CmcpError(Code.SESSION_PRINCIPAL_MISMATCH, "the session belongs to another agent")
            return known
        self._check_room(agent)
        session = McpSession(session_id, agent, runtime.config.name, pin, stateful=True,
                             access_token=access_token)
        self._by_id[session_id] = session
        self._per_agent[agent] = self._per_agent.get(agent, 0) + 1
        log.info("session adopted", extra={"session_id": session_id, "agent": agent,
                                           "route": session.route, "enclave": pin.address})
        return session

    def _check_room(self, agent: str) -> None:
        if self._per_agent.get(agent, 0) >= self.max_sessions_per_agent:
            raise CmcpError(Code.SESSION_LIMIT,
                            f"this agent holds its maximum of {self.max_sessions_per_agent} sessions")
        if len(self._by_id) + len(self._opening_slots) >= self.max_sessions:
            raise CmcpError(Code.SESSION_LIMIT, "the gateway holds its maximum of sessions")

    async def implicit(self, runtime: RouteRuntime, agent: str, access_token: str = "") -> McpSession:
        """Stateless requests (2026-07-28 clients, or no Mcp-Session-Id) share one per-agent
        session; concurrent first requests wait for the one open under way."""
        key = (runtime.config.name, agent)
        session = self.find(self._implicit.get(key))
        if session is not None:
            return session
        opening = self._opening.get(key)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[McpSession] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            session = await self.open(runtime, agent, stateful=False, access_token=access_token)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self._opening[key]
        self._implicit[key] = session.id
        future.set_result(session)
        return session

    def _release(self, agent: str) -> None:
        left = self._per_agent.get(agent, 1) - 1
        if left > 0:
            self._per_agent[agent] = left
        else:
            self._per_agent.pop(agent, None)

    def forget(self, session: McpSession) -> None:
        session.end()
        if self._by_id.pop(session.id, None) is not None:
            self._release(session.agent)
        key = (session.route, session.agent)
        if self._implicit.get(key) == session.id:
            del self._implicit[key]

    async def close(self, runtime: RouteRuntime, session: McpSession, reason: str) -> dict[str, Any] | None:
        """Close at the enclave; returns the session's signed Trust Record summary (None on failure),
        with the GPU evidence the record names, if any, under ``gpuEvidence``. A close that fails
        is asked again by :meth:`retry_closes` (``CLOSE_RETRY_SECONDS``)."""
        self.forget(session)
        try:  # close_session carries the queued outcomes first: the Trust Record covers every call
            resp = await runtime.pool.close_session(session.pin, session.id, reason)
        except CmcpError as exc:
            self._close_failed(session, reason, exc)
            return None
        self._unclosed.pop(session.id, None)
        record = bytes(resp.trust_record_json)
        if self.trust_record_dir:
            path = Path(self.trust_record_dir, f"{session.id}.json")
            await asyncio.to_thread(path.write_bytes, record)
            if resp.gpu_evidence:  # what the record's gpu-attestation references name, beside it
                side = Path(self.trust_record_dir, f"{session.id}{GPU_EVIDENCE_SUFFIX}")
                await asyncio.to_thread(side.write_bytes, gpu_evidence_file(resp.gpu_evidence))
        log.info(
            "session closed",
            extra={
                "session_id": session.id,
                "chain_tip": resp.chain_tip,
                "entries": resp.entries,
                "reason": reason,
                "trust_record_digest": tagged_sha256(record),
            },
        )
        closed = {
            "session_id": session.id,
            "chain_tip": resp.chain_tip,
            "entries": resp.entries,
            "trust_record": orjson.loads(record) if record else None,
        }
        if resp.gpu_evidence:  # the envelopes the record names: this answer is also a --gpu-evidence file
            closed[GPU_EVIDENCE_FIELD] = gpu_evidence_items(resp.gpu_evidence)
        return closed

    def _close_failed(self, session: McpSession, reason: str, exc: CmcpError) -> None:
        """Keep the close to ask again, unless the enclave does not know the session (it never
        will) or the retry window is over; bounded by ``max_sessions``, the oldest given up first."""
        kept = self._unclosed.pop(session.id, None)
        until = kept.until if kept is not None else time.monotonic() + CLOSE_RETRY_SECONDS
        unclosed = _Unclosed(session, reason, until, exc)
        if exc.code is Code.SESSION_UNKNOWN or time.monotonic() >= until:
            _given_up(unclosed)
            return
        self._unclosed[session.id] = unclosed
        log.warning("session close failed; asked again on the next refresh",
                    extra={"session_id": session.id, "code": str(exc.code), "detail": exc.detail})
        while len(self._unclosed) > self.max_sessions:
            _given_up(self._unclosed.pop(next(iter(self._unclosed))))

    def give_up_closes(self) -> None:
        """Stop asking (the gateway stops): each session still unclosed is logged as an error."""
        for unclosed in self._unclosed.values():
            _given_up(unclosed)
        self._unclosed.clear()

    @property
    def unclosed(self) -> list[str]:
        """Sessions whose close failed and is asked again (oldest first)."""
        return list(self._unclosed)

    async def retry_closes(self, routes: Iterable[RouteRuntime]) -> None:
        """Ask the enclave again for every close that failed; each success keeps its record as
        :meth:`close` does."""
        by_name = {r.config.name: r for r in routes}
        for unclosed in list(self._unclosed.values()):
            runtime = by_name.get(unclosed.session.route)
            if runtime is None or time.monotonic() >= unclosed.until:  # its route is gone, or its window
                _given_up(self._unclosed.pop(unclosed.session.id))
                continue
            await self.close(runtime, unclosed.session, unclosed.reason)

    async def reap_idle(self, routes: Iterable[RouteRuntime]) -> None:
        """Close every session unused for ``idle_seconds``."""
        horizon = time.monotonic() - self.idle_seconds
        by_name = {r.config.name: r for r in routes}
        for session in [s for s in self._by_id.values() if s.last_used < horizon]:
            await self.close(by_name[session.route], session, "idle")
