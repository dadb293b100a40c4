"""cmcp_devkit.postgres: a private PostgreSQL cluster on loopback for tests, gone on stop."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from cmcp_devkit.postgres import DATABASE_USER, PostgresServer, bin_dir, postgres, start_postgres


def test_bin_dir_honours_pg_bin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    assert bin_dir() == tmp_path


def test_bin_dir_finds_the_server_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    found = bin_dir()
    assert (found / "initdb").exists() and (found / "postgres").exists()


def test_the_shared_server_accepts_the_trusted_user(postgres_server: PostgresServer) -> None:
    assert postgres_server.dsn == f"postgresql://{DATABASE_USER}@127.0.0.1:{postgres_server.port}/postgres"
    with psycopg.connect(postgres_server.dsn) as conn:
        row = conn.execute("select current_user, inet_server_addr()::text").fetchone()
    assert row is not None
    assert row[0] == DATABASE_USER
    assert row[1].startswith("127.0.0.1")  # loopback only


def test_stopping_ends_the_server_and_removes_its_data(tmp_path: Path) -> None:
    with postgres(tmp_path / "logs") as server:
        with psycopg.connect(server.dsn) as conn:
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (1)")
        data_dir = server.data_dir
        assert (data_dir / "data" / "PG_VERSION").exists()
    assert not server.proc.alive()
    assert not data_dir.exists()
    assert (tmp_path / "logs" / "postgres.log").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn, connect_timeout=2)


def test_missing_binaries_fail_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what a failed start leaves stays here
    monkeypatch.setenv("PG_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(OSError), postgres(tmp_path / "logs"):  # not found, or not ours to run
        pass


def test_a_failed_start_leaves_no_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PG_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(OSError):
        start_postgres(tmp_path / "logs")
    assert list(tmp_path.glob("cmcp-pg-*")) == []
