"""Spent permits in a real PostgreSQL: single use across replicas, restarts and races; errors deny."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import psycopg
import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.postgres import PostgresServer, start_postgres
from cmcp_guard.replay import ReplayCache
from cmcp_guard.spent import open_spent_store
from cmcp_guard.spent_postgres import PostgresSpentPermits

NOW = 1_800_000_000


def _nonce() -> str:
    return secrets.token_urlsafe(16)


def _replayed(store: object, nonce: str) -> bool:
    try:
        store.use(nonce, NOW + 60, now=NOW)  # type: ignore[attr-defined]
    except CmcpError as exc:
        assert exc.code is Code.PERMIT_REPLAYED
        return True
    return False


def test_a_permit_is_spent_once_across_replicas_and_restarts(postgres_server: PostgresServer) -> None:
    replica_a = open_spent_store(postgres_server.dsn, retention_seconds=90)
    replica_b = open_spent_store(postgres_server.dsn, retention_seconds=90)
    assert isinstance(replica_a, PostgresSpentPermits)
    nonce = _nonce()
    assert not _replayed(replica_a, nonce)
    assert _replayed(replica_b, nonce)  # the second guard replica refuses the same permit
    replica_a.close()
    restarted = PostgresSpentPermits(postgres_server.dsn, retention_seconds=90)
    assert _replayed(restarted, nonce)  # and a restart forgets nothing


def test_weakened_per_process_stores_let_the_replay_through() -> None:
    """What the shared store prevents: two replicas with their own memory both admit one permit."""
    nonce = _nonce()
    assert not _replayed(ReplayCache(retention_seconds=90), nonce)
    assert not _replayed(ReplayCache(retention_seconds=90), nonce)


def test_a_race_between_replicas_admits_exactly_one(postgres_server: PostgresServer) -> None:
    stores = [PostgresSpentPermits(postgres_server.dsn, retention_seconds=90) for _ in range(8)]
    nonce, outcomes = _nonce(), []
    barrier = threading.Barrier(len(stores))

    def spend(store: PostgresSpentPermits) -> None:
        barrier.wait()
        outcomes.append(_replayed(store, nonce))

    threads = [threading.Thread(target=spend, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False] + [True] * 7


def test_expired_rows_are_purged(postgres_server: PostgresServer) -> None:
    store = PostgresSpentPermits(postgres_server.dsn, retention_seconds=10)
    old = _nonce()
    store.use(old, NOW, now=NOW)
    before = len(store)
    store.use(_nonce(), NOW + 10_000, now=NOW + 1_000)  # past old's exp + retention: purged first
    with psycopg.connect(postgres_server.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM cmcp_spent_permits WHERE nonce = %s", (old,)).fetchone()
    assert row == (0,) and len(store) <= before


def test_an_unreachable_store_refuses_start_up_and_then_every_call(tmp_path: Path) -> None:
    server = start_postgres(tmp_path)
    store = PostgresSpentPermits(server.dsn, retention_seconds=90)
    assert not _replayed(store, _nonce())
    server.stop()
    for _ in range(2):  # the first call loses the connection, the second cannot reconnect
        with pytest.raises(CmcpError) as err:
            store.use(_nonce(), NOW + 60, now=NOW)
        assert err.value.code is Code.SPENT_STORE_UNAVAILABLE and "postgresql://127.0.0.1" in err.value.detail
    with pytest.raises(CmcpError) as refused:  # at start-up too, with the code and without the password
        PostgresSpentPermits(server.dsn, retention_seconds=90)
    assert refused.value.code is Code.SPENT_STORE_UNAVAILABLE
