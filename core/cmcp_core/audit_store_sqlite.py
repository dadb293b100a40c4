"""Audit entries in SQLite (WAL) on a file: the embedded default, one node (a PVC in the chart).

One transaction per answer's entries; ``INSERT OR IGNORE`` keyed by ``(kid, chain, seq)`` makes a
resend a no-op, and a row that was ignored is compared by hash, so a different entry for a held
place is ``AUDIT_FORK``, never silently dropped. ``synchronous=FULL``: an entry the gateway acted
on survives a node crash too. WAL needs shared memory, so the file must be on a local volume.
Every database error is ``AUDIT_STORE_UNAVAILABLE``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from cmcp_core.audit_store_rows import ChainSummary, Row, principal_of
from cmcp_core.errors import CmcpError, Code

# A rowid table: an entry of a few KB stays in its leaf page. WITHOUT ROWID keeps at most ~1 KB of a
# row there and moves the rest to an overflow page of its own, so a decision entry took two pages:
# 2.3x the file and more pages written per commit (ADR 0032). Files made before keep their table.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_entries (kid TEXT NOT NULL, chain TEXT NOT NULL, seq INTEGER NOT NULL,"
    " hash TEXT NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL, entry BLOB NOT NULL,"
    " UNIQUE (kid, chain, seq))"
)
_ATTESTATIONS = (
    "CREATE TABLE IF NOT EXISTS enclave_attestations (kid TEXT PRIMARY KEY, nonce BLOB NOT NULL,"
    " attestation BLOB NOT NULL) WITHOUT ROWID"
)


class SqliteAuditStore:
    def __init__(self, path: Path, *, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=busy_timeout_seconds, isolation_level=None,
                                       check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"SQLite refused WAL mode ({mode}); a network filesystem?")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.execute(_ATTESTATIONS)
        except (OSError, sqlite3.Error) as exc:
            raise CmcpError(Code.AUDIT_STORE_UNAVAILABLE, f"audit store {path}: {exc}") from exc

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; any database error is ``AUDIT_STORE_UNAVAILABLE``."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise CmcpError(Code.AUDIT_STORE_UNAVAILABLE, f"audit store {self.path}: {exc}") from exc

    def append(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        with self._using() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO audit_entries (kid, chain, seq, hash, kind, ts, entry)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.kid, r.chain, r.seq, r.hash, r.kind, r.ts, r.entry) for r in rows])
                added = db.total_changes - before
                if added != len(rows):
                    self._check_held(rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return added

    def _check_held(self, rows: Sequence[Row]) -> None:
        """Some rows were already there: each must be the very same entry (same hash)."""
        for row in rows:
            held = self._db.execute("SELECT hash FROM audit_entries WHERE kid = ? AND chain = ? AND seq = ?",
                                    (row.kid, row.chain, row.seq)).fetchone()
            if held is not None and held[0] != row.hash:
                raise CmcpError(Code.AUDIT_FORK,
                                f"{row.chain} seq {row.seq}: the store holds {held[0]}, not {row.hash}")

    def chains(self) -> list[ChainSummary]:
        with self._using() as db:
            rows = db.execute(
                "SELECT a.kid, a.chain, count(*), min(a.ts), max(a.ts),"
                " (SELECT o.entry FROM audit_entries o WHERE o.kid = a.kid AND o.chain = a.chain"
                "  AND o.seq = 0 AND o.kind = 'open')"
                " FROM audit_entries a GROUP BY a.kid, a.chain ORDER BY a.kid, a.chain").fetchall()
        return [ChainSummary(kid, chain, count, first, last, principal_of(opened) if opened else None)
                for kid, chain, count, first, last, opened in rows]

    def entries(self, kid: str, chain: str) -> list[bytes]:
        with self._using() as db:
            rows = db.execute("SELECT entry FROM audit_entries WHERE kid = ? AND chain = ? ORDER BY seq",
                              (kid, chain)).fetchall()
        return [bytes(entry) for (entry,) in rows]

    def put_attestation(self, kid: str, nonce: bytes, attestation: bytes) -> None:
        with self._using() as db:
            db.execute("INSERT OR IGNORE INTO enclave_attestations (kid, nonce, attestation)"
                       " VALUES (?, ?, ?)", (kid, nonce, attestation))

    def attestations(self, kids: Collection[str]) -> dict[str, tuple[bytes, bytes]]:
        held: dict[str, tuple[bytes, bytes]] = {}
        with self._using() as db:
            for kid in sorted(set(kids)):
                row = db.execute("SELECT nonce, attestation FROM enclave_attestations WHERE kid = ?",
                                 (kid,)).fetchone()
                if row is not None:
                    held[kid] = (bytes(row[0]), bytes(row[1]))
        return held

    def close(self) -> None:
        with self._lock:
            self._db.close()
