"""PostgreSQL audit store specifics: shared by replicas, a lost connection is a coded error and is
re-opened on the next call, an unreachable server refuses start-up."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import psycopg
import pytest

from cmcp_core.audit_store_postgres import PostgresAuditStore
from cmcp_core.audit_store_rows import Row
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.postgres import PostgresServer, start_postgres


def _row(kid: str, seq: int, digest: str = "a") -> Row:
    raw = json.dumps({"kid": kid, "session_id": "s", "seq": seq, "hash": digest}).encode()
    return Row(kid=kid, chain="s", seq=seq, hash=digest, kind="decision", ts=seq, entry=raw)


def test_two_replicas_share_one_trail(postgres_server: PostgresServer) -> None:
    kid = secrets.token_urlsafe(8)
    a, b = PostgresAuditStore(postgres_server.dsn), PostgresAuditStore(postgres_server.dsn)
    assert a.append([_row(kid, 0)]) == 1
    assert b.append([_row(kid, 0), _row(kid, 1)]) == 1
    with pytest.raises(CmcpError) as err:
        a.append([_row(kid, 1, digest="other")])
    assert err.value.code is Code.AUDIT_FORK
    assert [json.loads(e)["seq"] for e in a.entries(kid, "s")] == [0, 1]
    a.close()
    b.close()


def test_a_lost_connection_is_coded_and_reopened(postgres_server: PostgresServer) -> None:
    kid = secrets.token_urlsafe(8)
    store = PostgresAuditStore(postgres_server.dsn)
    store.append([_row(kid, 0)])
    with psycopg.connect(postgres_server.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE pid <> pg_backend_pid() AND datname = current_database()")
    with pytest.raises(CmcpError) as err:
        store.append([_row(kid, 1)])
    assert err.value.code is Code.AUDIT_STORE_UNAVAILABLE and "password" not in err.value.detail
    assert store.append([_row(kid, 1)]) == 1  # the next call reconnects
    store.close()


def test_an_unreachable_server_refuses_start_up_and_every_call(tmp_path: Path) -> None:
    server = start_postgres(tmp_path)
    store = PostgresAuditStore(server.dsn)
    server.stop()
    for _ in range(2):
        with pytest.raises(CmcpError) as err:
            store.append([_row("k", 0)])
        assert err.value.code is Code.AUDIT_STORE_UNAVAILABLE and "postgresql://127.0.0.1" in err.value.detail
    with pytest.raises(CmcpError) as err:
        PostgresAuditStore(server.dsn)
    assert err.value.code is Code.AUDIT_STORE_UNAVAILABLE
