"""One PostgreSQL connection for a store that replicas share (the ``cmcp-core[audit-store]``
extra, or the guard's own dependency): opened on first use, dropped after
any error and opened again on the next call, so a lost connection is never papered over.

The guard's spent permits and the gateway's audit entries both keep one of these; the caller
holds its own lock around every use (psycopg connections are not for concurrent use).
"""

from __future__ import annotations

import psycopg

CONNECT_TIMEOUT_SECONDS = 5
# Any fixed key: the advisory lock every cMCP store takes around its CREATE TABLE statements.
_SCHEMA_LOCK_KEY = 0x634D4350


def create_schema(conn: psycopg.Connection[tuple[object, ...]], *statements: str) -> None:
    """Run ``CREATE TABLE IF NOT EXISTS`` statements that replicas starting together may race on.

    PostgreSQL's ``IF NOT EXISTS`` is not safe against a concurrent create: the loser fails with a
    unique violation on ``pg_type`` and its replica would not start. One transaction-level advisory
    lock makes them take turns; the second finds the tables there."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


class PostgresConnection:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    @property
    def where(self) -> str:
        """The DSN without its password, for error messages and logs."""
        info = psycopg.conninfo.conninfo_to_dict(self._dsn)
        return f"postgresql://{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"

    def get(self) -> psycopg.Connection[tuple[object, ...]]:
        """The open connection (autocommit), opened now if there is none."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        return self._conn

    def drop(self) -> None:
        """Close it; the next :meth:`get` opens a fresh one."""
        if self._conn is not None:
            self._conn.close()
