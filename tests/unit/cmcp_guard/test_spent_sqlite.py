"""The SQLite spent-permit store: one spend per nonce across connections and restarts; errors deny.

Two store objects on one file stand for two guard replicas on a node (each has its own SQLite
connection, as separate processes would); closing and reopening stands for a restart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_guard.replay import ReplayCache
from cmcp_guard.spent import MEMORY, open_spent_store
from cmcp_guard.spent_sqlite import PURGE_INTERVAL_SECONDS, SqliteSpentPermits

NOW = 1_800_000_000.0
EXP = int(NOW) + 60
RETAIN = 30


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "spent.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteSpentPermits]:
    opened = SqliteSpentPermits(db, retention_seconds=RETAIN)
    yield opened
    opened.close()


def code_of(spend: SqliteSpentPermits | ReplayCache, nonce: str, now: float = NOW) -> Code:
    with pytest.raises(CmcpError) as refused:
        spend.use(nonce, EXP, now=now)
    return refused.value.code


def test_second_replica_on_the_same_file_refuses_the_replay(db: Path, store: SqliteSpentPermits) -> None:
    other = SqliteSpentPermits(db, retention_seconds=RETAIN)
    store.use("n1", EXP, now=NOW)
    assert code_of(other, "n1") is Code.PERMIT_REPLAYED
    assert code_of(store, "n1") is Code.PERMIT_REPLAYED
    other.use("n2", EXP, now=NOW)  # a different nonce is fine at either
    assert len(store) == 2
    other.close()


def test_spent_nonces_survive_a_restart(db: Path, store: SqliteSpentPermits) -> None:
    store.use("n1", EXP, now=NOW)
    store.close()
    restarted = SqliteSpentPermits(db, retention_seconds=RETAIN)
    assert code_of(restarted, "n1", NOW + 1) is Code.PERMIT_REPLAYED
    restarted.close()


def test_weakened_in_memory_stores_let_the_replay_through_at_a_second_replica() -> None:
    first, second = ReplayCache(), ReplayCache()
    first.use("n1", EXP, now=NOW)
    second.use("n1", EXP, now=NOW)  # no error: per-process memory is why the SQLite store exists
    assert len(first) == len(second) == 1


def test_file_is_in_wal_mode(db: Path, store: SqliteSpentPermits) -> None:
    with sqlite3.connect(db) as probe:
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_are_purged_only_after_exp_plus_retention(db: Path, store: SqliteSpentPermits) -> None:
    store.use("old", EXP, now=NOW)
    # just inside exp + retention: a new spend purges nothing, the old nonce is still refused
    store.use("mid", EXP + 3600, now=EXP + RETAIN)
    assert code_of(store, "old", EXP + RETAIN) is Code.PERMIT_REPLAYED
    # past it and past the purge interval: the row is gone
    later = EXP + RETAIN + PURGE_INTERVAL_SECONDS + 1
    store.use("new", int(later) + 60, now=later)
    with sqlite3.connect(db) as probe:
        nonces = {row[0] for row in probe.execute("SELECT nonce FROM spent")}
    assert nonces == {"mid", "new"}


def test_a_locked_store_denies_with_a_coded_error(db: Path) -> None:
    impatient = SqliteSpentPermits(db, retention_seconds=RETAIN, busy_timeout_seconds=0.01)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock past the busy timeout
    try:
        assert code_of(impatient, "n1") is Code.SPENT_STORE_UNAVAILABLE
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    impatient.use("n1", EXP, now=NOW)  # not recorded while locked, so it is still spendable once


def test_a_closed_store_denies_never_accepts(store: SqliteSpentPermits) -> None:
    store.close()
    assert code_of(store, "n1") is Code.SPENT_STORE_UNAVAILABLE


def test_an_unusable_path_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.Error):
        SqliteSpentPermits(tmp_path / "missing-dir" / "spent.db", retention_seconds=RETAIN)


def test_store_spec(tmp_path: Path) -> None:
    assert isinstance(open_spent_store(MEMORY, RETAIN), ReplayCache)
    sqlite_store = open_spent_store(f"sqlite:{tmp_path / 's.db'}", RETAIN)
    assert isinstance(sqlite_store, SqliteSpentPermits)
    sqlite_store.close()
    for bad in ("sqlite:", "", "redis://x", "mysql://db/spent"):
        with pytest.raises(ValueError, match="--spent-store"):
            open_spent_store(bad, RETAIN)
