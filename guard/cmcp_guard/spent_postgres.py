"""Spent permit nonces in PostgreSQL: one store for every guard replica on every node.

SQLite on a node-local volume covers replicas on one node; a Deployment spread over nodes needs
a store they all reach. Spending is one ``INSERT`` keyed by the nonce, committed before the call
is admitted, so two replicas racing on one permit cannot both succeed: the primary key decides.
Every database error denies (``SPENT_STORE_UNAVAILABLE``); a lost connection is re-opened on the
next call, never papered over.
"""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg import errors

from cmcp_core.errors import CmcpError, Code
from cmcp_core.postgres import PostgresConnection, create_schema

PURGE_INTERVAL_SECONDS = 60.0
_SCHEMA = "CREATE TABLE IF NOT EXISTS cmcp_spent_permits (nonce TEXT PRIMARY KEY, expires BIGINT NOT NULL)"


class PostgresSpentPermits:
    """A ``SpentPermits`` on a PostgreSQL database; rows are dropped after ``exp + retention``."""

    def __init__(self, dsn: str, *, retention_seconds: int) -> None:
        self._db = PostgresConnection(dsn)
        self._retention = retention_seconds
        self._lock = threading.Lock()
        self._next_purge = 0.0
        with self._lock:
            try:
                create_schema(self._db.get(), _SCHEMA)  # fails start-up, not the first call, on a bad DSN
            except psycopg.Error as exc:
                self._db.drop()
                raise CmcpError(Code.SPENT_STORE_UNAVAILABLE,
                                f"spent-permit store {self.where}: {exc}") from exc

    @property
    def where(self) -> str:
        return self._db.where

    def use(self, nonce: str, exp: int, now: float | None = None) -> None:
        """Spend ``nonce``; ``PERMIT_REPLAYED`` if any replica did, ``SPENT_STORE_UNAVAILABLE`` on error."""
        current = time.time() if now is None else now
        with self._lock:
            try:
                conn = self._db.get()
                if current >= self._next_purge:
                    conn.execute("DELETE FROM cmcp_spent_permits WHERE expires < %s", (int(current),))
                    self._next_purge = current + PURGE_INTERVAL_SECONDS
                conn.execute("INSERT INTO cmcp_spent_permits (nonce, expires) VALUES (%s, %s)",
                             (nonce, exp + self._retention))
            except errors.UniqueViolation:
                raise CmcpError(Code.PERMIT_REPLAYED, "permit nonce already used") from None
            except psycopg.Error as exc:
                self._db.drop()  # reconnect on the next call
                raise CmcpError(Code.SPENT_STORE_UNAVAILABLE,
                                f"spent-permit store {self.where}: {exc}") from exc

    def __len__(self) -> int:
        with self._lock:
            row = self._db.get().execute("SELECT count(*) FROM cmcp_spent_permits").fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def close(self) -> None:
        with self._lock:
            self._db.drop()
