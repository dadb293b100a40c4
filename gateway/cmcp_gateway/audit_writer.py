"""The gateway's side of the audit trail: every enclave answer's entries, stored before use.

Each enclave answer carries the signed entries it produced (``audit_entries``); the gateway
writes them to the audit store (:mod:`cmcp_core.audit_store`) before it uses a permit, answers
the agent or hands out a session id. If it cannot, the call fails closed with
``AUDIT_STORE_UNAVAILABLE`` and the entries are kept (bounded, ``MAX_BACKLOG``) and written
first on the next write, so a store outage stops traffic but loses nothing while this process
lives.

Writes start the moment they are submitted (:meth:`AuditWriter.submit`). With other agent calls
in flight they run in a worker thread, so the store's I/O never holds up those calls, and the
caller checks the answer's signature meanwhile. One write is in flight at a time; answers that
arrive meanwhile share the next transaction (group commit), so concurrent calls pay one commit
between them instead of one each. If the store refuses a shared write as a fork, each answer is
written alone, so only the forked one fails. A call that is the only one in flight
(:meth:`AuditWriter.call`) writes a local SQLite store inline: nothing waits on the event loop,
and the hand-off to a thread and back costs more than the commit (measured in ADR 0011).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cmcp_core.audit_store import AuditStore, Row, rows_of, trail_for
from cmcp_core.audit_store_sqlite import SqliteAuditStore
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2

log = logging.getLogger("cmcp.gateway")
MAX_BACKLOG = 100_000  # entries kept for a retry while the store is down


@dataclass
class _Part:
    """One answer's rows and the future its caller awaits (none for the kept backlog)."""

    rows: list[Row]
    done: asyncio.Future[None] | None = None
    error: CmcpError | None = field(default=None, repr=False)


class AuditWriter:
    def __init__(self, store: AuditStore, max_backlog: int = MAX_BACKLOG) -> None:
        self.store = store
        self.max_backlog = max_backlog
        self.backlog: list[Row] = []
        self.written = 0  # rows the store took (new ones)
        self._waiting: list[_Part] = []
        self._busy = False
        self._calls = 0  # agent calls in flight (see call())
        self._attested: set[str] = set()  # enclave keys whose attestation the store holds

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Marks an agent call in flight from its request to the enclave until its entries are
        stored; while it is the only one, its write may run inline."""
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1

    def submit(self, entries: Sequence[bytes]) -> asyncio.Future[None]:
        """Start storing ``entries`` now; the future is done once they are durable, or fails with
        a coded ``CmcpError``. Malformed entries fail here, before anything is written."""
        loop = asyncio.get_running_loop()
        part = _Part(rows_of(entries), loop.create_future())
        self._waiting.append(part)
        if not self._busy:
            self._start(loop)
        assert part.done is not None
        return part.done

    async def record(self, entries: Sequence[bytes]) -> None:
        """Store ``entries`` (and any kept from a failed write); a coded ``CmcpError`` when not."""
        await self.submit(entries)

    async def keep_attestation(self, kid: str, nonce: bytes, response: bytes) -> None:
        """Keep an enclave's attestation once, before any of its entries: an enclave that later takes
        one of its principals over appraises it from here."""
        if kid not in self._attested:
            await asyncio.to_thread(self.store.put_attestation, kid, nonce, response)
            self._attested.add(kid)

    async def trail(self, principal: str, *, owner: str, bundle_hash: str) -> enclave_pb2.PrincipalTrail:
        """What the enclave ``owner`` needs to take ``principal`` over (:func:`trail_for`)."""
        return await asyncio.to_thread(trail_for, self.store, principal, owner=owner, bundle_hash=bundle_hash,
                                       now=time.time())

    async def flush(self) -> None:
        """Write what a failed call kept (shutdown, periodic job); errors are logged, not raised."""
        try:
            await self.record(())
        except CmcpError as exc:
            log.error("audit backlog not written",
                      extra={"code": str(exc.code), "entries": len(self.backlog)})

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        parts, self._waiting = self._waiting, []
        if self.backlog:
            parts.insert(0, _Part(self.backlog))
            self.backlog = []
        if not any(p.rows for p in parts):
            self._settle(parts)
            return
        self._busy = True
        if self._calls <= 1 and isinstance(self.store, SqliteAuditStore):
            try:
                self._write(parts)
            except Exception as exc:  # as the thread's job would end: settled, never left busy
                self._finished(loop, parts, exc)
            else:
                self._finished(loop, parts, None)
            return
        job = loop.run_in_executor(None, self._write, parts)
        job.add_done_callback(lambda finished: self._finished(loop, parts, finished.exception()))

    def _write(self, parts: list[_Part]) -> None:
        """In the writer thread: one transaction for every part; on a fork, each part alone."""
        try:
            self.written += self.store.append([row for part in parts for row in part.rows])
            return
        except CmcpError as exc:
            if exc.code is not Code.AUDIT_FORK or len(parts) == 1:
                for part in parts:
                    part.error = exc
                return
        for part in parts:
            try:
                self.written += self.store.append(part.rows)
            except CmcpError as exc:
                part.error = exc

    def _finished(self, loop: asyncio.AbstractEventLoop, parts: list[_Part],
                  unexpected: BaseException | None) -> None:
        self._busy = False
        if unexpected is not None:  # not a store error: a bug, still failed closed
            log.error("audit write failed", exc_info=unexpected)
            for part in parts:
                part.error = CmcpError(Code.AUDIT_STORE_UNAVAILABLE, f"audit write failed: {unexpected!r}")
        self._keep([row for part in parts if _unavailable(part) for row in part.rows])
        for part in parts:
            if part.error is not None and not _unavailable(part):  # AUDIT_FORK: never retried, never silent
                log.error("audit entries refused by the store",
                          extra={"code": str(part.error.code), "detail": part.error.detail})
        self._settle(parts)
        if self._waiting:
            self._start(loop)

    def _keep(self, rows: list[Row]) -> None:
        self.backlog = rows + self.backlog
        if len(self.backlog) > self.max_backlog:
            lost = len(self.backlog) - self.max_backlog
            del self.backlog[: lost]
            log.error("audit entries lost: the store is down and the backlog is full",
                      extra={"code": str(Code.AUDIT_STORE_UNAVAILABLE), "entries": lost})

    @staticmethod
    def _settle(parts: list[_Part]) -> None:
        for part in parts:
            if part.done is None or part.done.done():  # the backlog, or a caller that gave up
                continue
            if part.error is None:
                part.done.set_result(None)
            else:
                part.done.set_exception(part.error)


def _unavailable(part: _Part) -> bool:
    return part.error is not None and part.error.code is Code.AUDIT_STORE_UNAVAILABLE
