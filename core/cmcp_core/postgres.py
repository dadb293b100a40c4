"""One PostgreSQL connection for a store that replicas share (the ``cmcp-core[audit-store]``
extra, or the guard's own dependency): opened on first use, dropped after
any error and opened again on the next call, so a lost connection is never papered over.

The guard's spent permits and the gateway's audit entries both keep one of these; the caller
holds its own lock around every use (psycopg connections are not for concurrent use).
"""

from __future__ import annotations

import psycopg

CONNECT_TIMEOUT_SECONDS = 5


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
