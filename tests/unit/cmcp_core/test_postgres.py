"""The shared PostgreSQL connection: opened on first use, never printing the password, and
opened afresh after :meth:`drop` (what a store does after any database error)."""

from __future__ import annotations

import psycopg
import pytest

from cmcp_core.postgres import PostgresConnection
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
