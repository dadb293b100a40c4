"""The gateway's side of the audit trail: every enclave answer's entries, stored before use.

Each enclave answer carries the signed entries it produced (``audit_entries``); the gateway
writes them to the audit store (:mod:`cmcp_core.audit_store`) before it uses a permit, answers
the agent or hands out a session id. If it cannot, the call fails closed with
``AUDIT_STORE_UNAVAILABLE`` and the entries are kept (bounded, ``MAX_BACKLOG``) and written
first on the next call, so a store outage stops traffic but loses nothing while this process
lives. Writes run in a worker thread: the store's I/O never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from cmcp_core.audit_store import AuditStore, Row, rows_of
from cmcp_core.errors import CmcpError, Code

log = logging.getLogger("cmcp.gateway")
MAX_BACKLOG = 100_000  # entries kept for a retry while the store is down


class AuditWriter:
    def __init__(self, store: AuditStore, max_backlog: int = MAX_BACKLOG) -> None:
        self.store = store
        self.max_backlog = max_backlog
        self.backlog: list[Row] = []
        self.written = 0  # rows the store took (new ones)

    async def record(self, entries: Sequence[bytes]) -> None:
        """Store ``entries`` (and any kept from a failed write); a coded ``CmcpError`` when not."""
        rows = rows_of(entries)
        if self.backlog:
            rows, self.backlog = self.backlog + rows, []
        if not rows:
            return
        try:
            self.written += await asyncio.to_thread(self.store.append, rows)
        except CmcpError as exc:
            if exc.code is Code.AUDIT_STORE_UNAVAILABLE:
                self._keep(rows)
            else:  # AUDIT_FORK: never retried, never dropped silently
                log.error("audit entries refused by the store", extra={"code": str(exc.code),
                                                                       "detail": exc.detail})
            raise

    def _keep(self, rows: list[Row]) -> None:
        self.backlog = rows + self.backlog
        if len(self.backlog) > self.max_backlog:
            lost = len(self.backlog) - self.max_backlog
            del self.backlog[: lost]
            log.error("audit entries lost: the store is down and the backlog is full",
                      extra={"code": str(Code.AUDIT_STORE_UNAVAILABLE), "entries": lost})

    async def flush(self) -> None:
        """Write what a failed call kept (shutdown, periodic job); errors are logged, not raised."""
        try:
            await self.record(())
        except CmcpError as exc:
            log.error("audit backlog not written",
                      extra={"code": str(exc.code), "entries": len(self.backlog)})
