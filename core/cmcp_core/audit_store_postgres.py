"""Audit entries in PostgreSQL: one store every gateway replica on every node shares.

Same contract as :mod:`cmcp_core.audit_store_sqlite`: one transaction per answer's entries,
``ON CONFLICT DO NOTHING`` keyed by ``(kid, chain, seq)``, a conflicting row compared by hash
(``AUDIT_FORK``). Every database error is ``AUDIT_STORE_UNAVAILABLE``; a lost connection is
re-opened on the next call, never papered over.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterator, Sequence

import psycopg

from cmcp_core.audit_store_rows import ChainSummary, Row, principal_of
from cmcp_core.errors import CmcpError, Code
from cmcp_core.postgres import PostgresConnection, create_schema

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cmcp_audit_entries (kid TEXT NOT NULL, chain TEXT NOT NULL,"
    " seq BIGINT NOT NULL, hash TEXT NOT NULL, kind TEXT NOT NULL, ts BIGINT NOT NULL,"
    " entry BYTEA NOT NULL, PRIMARY KEY (kid, chain, seq))"
)
_ATTESTATIONS = (
    "CREATE TABLE IF NOT EXISTS cmcp_enclave_attestations (kid TEXT PRIMARY KEY, nonce BYTEA NOT NULL,"
    " attestation BYTEA NOT NULL)"
)


class PostgresAuditStore:
    def __init__(self, dsn: str) -> None:
        self._db = PostgresConnection(dsn)
        self._lock = threading.Lock()
        with self._using() as conn:  # a bad DSN fails start-up, not the first call
            create_schema(conn, _SCHEMA, _ATTESTATIONS)

    @property
    def where(self) -> str:
        return self._db.where

    @contextlib.contextmanager
    def _using(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """The connection under the lock; any database error drops it (the next call reconnects)
        and is ``AUDIT_STORE_UNAVAILABLE``."""
        with self._lock:
            try:
                yield self._db.get()
            except psycopg.Error as exc:
                self._db.drop()
                raise CmcpError(Code.AUDIT_STORE_UNAVAILABLE, f"audit store {self.where}: {exc}") from exc

    def append(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        with self._using() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cmcp_audit_entries (kid, chain, seq, hash, kind, ts, entry)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(r.kid, r.chain, r.seq, r.hash, r.kind, r.ts, r.entry) for r in rows])
            added = cur.rowcount
            if added != len(rows):
                self._check_held(cur, rows)
        return int(added)

    @staticmethod
    def _check_held(cur: psycopg.Cursor[tuple[object, ...]], rows: Sequence[Row]) -> None:
        for row in rows:
            cur.execute("SELECT hash FROM cmcp_audit_entries WHERE kid = %s AND chain = %s AND seq = %s",
                        (row.kid, row.chain, row.seq))
            held = cur.fetchone()
            if held is not None and held[0] != row.hash:
                raise CmcpError(Code.AUDIT_FORK,
                                f"{row.chain} seq {row.seq}: the store holds {held[0]}, not {row.hash}")

    def chains(self) -> list[ChainSummary]:
        with self._using() as conn:
            rows = conn.execute(
                "SELECT a.kid, a.chain, count(*), min(a.ts), max(a.ts),"
                " (SELECT o.entry FROM cmcp_audit_entries o WHERE o.kid = a.kid AND o.chain = a.chain"
                "  AND o.seq = 0 AND o.kind = 'open')"
                " FROM cmcp_audit_entries a GROUP BY a.kid, a.chain ORDER BY a.kid, a.chain").fetchall()
        return [ChainSummary(str(kid), str(chain), int(str(count)), int(str(first)), int(str(last)),
                             principal_of(bytes(opened)) if isinstance(opened, bytes | memoryview) else None)
                for kid, chain, count, first, last, opened in rows]

    def entries(self, kid: str, chain: str) -> list[bytes]:
        with self._using() as conn:
            rows = conn.execute("SELECT entry FROM cmcp_audit_entries WHERE kid = %s AND chain = %s"
                                " ORDER BY seq", (kid, chain)).fetchall()
        return [bytes(entry) for (entry,) in rows]  # type: ignore[call-overload]

    def put_attestation(self, kid: str, nonce: bytes, attestation: bytes) -> None:
        with self._using() as conn:
            conn.execute("INSERT INTO cmcp_enclave_attestations (kid, nonce, attestation) VALUES (%s, %s, %s)"
                         " ON CONFLICT DO NOTHING", (kid, nonce, attestation))

    def attestations(self, kids: Collection[str]) -> dict[str, tuple[bytes, bytes]]:
        wanted = sorted(set(kids))
        if not wanted:
            return {}
        with self._using() as conn:
            rows = conn.execute("SELECT kid, nonce, attestation FROM cmcp_enclave_attestations"
                                " WHERE kid = ANY(%s)", (wanted,)).fetchall()
        return {str(kid): (bytes(nonce), bytes(attestation))  # type: ignore[call-overload]
                for kid, nonce, attestation in rows}

    def close(self) -> None:
        with self._lock:
            self._db.drop()
