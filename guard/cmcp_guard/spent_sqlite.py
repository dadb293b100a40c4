"""Spent permit nonces in SQLite (WAL) on a file: shared by guard replicas on one node, kept across restarts.

Spending is one ``INSERT`` into a table keyed by the nonce, so two replicas racing on the same
permit cannot both succeed: the database's primary key decides, not a read-then-write in Python.
WAL lets several processes on the same host write the file; it needs shared memory, so the
file must be on a local volume, never on a network filesystem. Every database error denies.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from cmcp_core.errors import CmcpError, Code

PURGE_INTERVAL_SECONDS = 60.0
_SCHEMA = "CREATE TABLE IF NOT EXISTS spent (nonce TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID"


class SqliteSpentPermits:
    """A ``SpentPermits`` on one SQLite file; rows are dropped after ``exp + retention``."""

    def __init__(self, path: Path, *, retention_seconds: int, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self._retention = retention_seconds
        self._lock = threading.Lock()
        self._next_purge = 0.0
        # autocommit: each INSERT is its own transaction, durable before the call is admitted
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise OSError(f"{path}: SQLite refused WAL mode ({mode}); is it on a network filesystem?")
        # FULL: a spent nonce must survive a node crash too, or the permit could run again
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def use(self, nonce: str, exp: int, now: float | None = None) -> None:
        """Spend ``nonce``; ``PERMIT_REPLAYED`` if any replica did, ``SPENT_STORE_UNAVAILABLE`` on error."""
        current = time.time() if now is None else now
        with self._lock:
            try:
                if current >= self._next_purge:
                    self._db.execute("DELETE FROM spent WHERE expires < ?", (int(current),))
                    self._next_purge = current + PURGE_INTERVAL_SECONDS
                self._db.execute(
                    "INSERT INTO spent (nonce, expires) VALUES (?, ?)", (nonce, exp + self._retention)
                )
            except sqlite3.IntegrityError:
                raise CmcpError(Code.PERMIT_REPLAYED, "permit nonce already used") from None
            except sqlite3.Error as exc:
                raise CmcpError(
                    Code.SPENT_STORE_UNAVAILABLE, f"spent-permit store {self.path}: {exc}"
                ) from exc

    def __len__(self) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT count(*) FROM spent").fetchone()[0]
        return count

    def close(self) -> None:
        with self._lock:
            self._db.close()
