"""The shared PostgreSQL connection: opened on first use, never printing the password, and
opened afresh after :meth:`drop` (what a store does after any database error)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from cmcp_core.postgres import PostgresConnection, create_schema
from cmcp_devkit.postgres import PostgresServer


def test_where_names_the_database_without_the_password() -> None:
    where = PostgresConnection("postgresql://cmcp:s3cret@db.example:5433/trail").where
    assert where == "postgresql://db.example:5433/trail" and "s3cret" not in where


def test_a_dropped_connection_is_opened_again(postgres_server: PostgresServer) -> None:
    link = PostgresConnection(postgres_server.dsn)
    first = link.get()
    assert first.execute("SELECT 1").fetchone() == (1,)
    assert link.get() is first  # kept while it is open
    link.drop()
    assert first.closed
    second = link.get()
    assert second is not first and second.execute("SELECT 2").fetchone() == (2,)
    link.drop()


def test_an_unreachable_server_raises_at_get() -> None:
    link = PostgresConnection("postgresql://cmcp@127.0.0.1:9/none?connect_timeout=1")
    with pytest.raises(psycopg.OperationalError):  # the caller turns it into its own code
        link.get()


Create = Callable[[psycopg.Connection[tuple[object, ...]], str], None]


def _race(dsn: str, table: str, create: Create) -> list[BaseException]:
    """Eight replicas create ``table`` at the same moment; the errors they raised."""
    statement = f"CREATE TABLE IF NOT EXISTS {table} (k TEXT PRIMARY KEY)"
    start, errors = threading.Barrier(8), list[BaseException]()

    def replica() -> None:
        link = PostgresConnection(dsn)
        try:
            start.wait()
            create(link.get(), statement)
        except BaseException as exc:
            errors.append(exc)
        finally:
            link.drop()

    threads = [threading.Thread(target=replica) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_replicas_starting_together_all_create_their_schema(postgres_server: PostgresServer) -> None:
    """Two guard replicas started together once failed: one lost the CREATE TABLE race."""
    for attempt in range(20):
        assert _race(postgres_server.dsn, f"cmcp_race_{attempt}", create_schema) == []


def test_weakened_without_the_lock_a_replica_loses_the_race(postgres_server: PostgresServer) -> None:
    def unlocked(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> None:
        conn.execute(statement)  # type: ignore[arg-type]

    lost = [e for attempt in range(40)
            for e in _race(postgres_server.dsn, f"cmcp_unlocked_{attempt}", unlocked)]
    assert any(isinstance(e, psycopg.errors.UniqueViolation) for e in lost)  # what the guard hit
