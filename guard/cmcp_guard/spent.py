"""Where spent permit nonces live: the interface and the ``--spent-store`` chooser.

Single use only holds if every guard replica asks the same store and the store outlives a
restart; the in-memory store does neither and is for a single dev process only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cmcp_guard.replay import ReplayCache
from cmcp_guard.spent_sqlite import SqliteSpentPermits

MEMORY = "memory"
SQLITE_PREFIX = "sqlite:"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class SpentPermits(Protocol):
    """Records a nonce as spent, atomically; raises ``PERMIT_REPLAYED`` on a second use."""

    def use(self, nonce: str, exp: int, now: float | None = None) -> None: ...


def open_spent_store(spec: str, retention_seconds: int) -> SpentPermits:
    """``memory``, ``sqlite:PATH`` or a ``postgresql://`` URI; ``ValueError`` for anything else
    (``OSError``/``psycopg.Error`` when the store cannot be opened)."""
    if spec == MEMORY:
        return ReplayCache(retention_seconds=retention_seconds)
    if spec.startswith(SQLITE_PREFIX) and len(spec) > len(SQLITE_PREFIX):
        return SqliteSpentPermits(Path(spec[len(SQLITE_PREFIX) :]), retention_seconds=retention_seconds)
    if spec.startswith(POSTGRES_PREFIXES):
        # loaded for a PostgreSQL store only: psycopg costs ~10 MiB of RSS the other stores never need
        from cmcp_guard.spent_postgres import PostgresSpentPermits

        return PostgresSpentPermits(spec, retention_seconds=retention_seconds)
    raise ValueError(f"--spent-store must be 'memory', 'sqlite:PATH' or 'postgresql://...', not {spec!r}")
