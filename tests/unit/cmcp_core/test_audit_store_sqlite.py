"""SQLite audit store specifics: WAL, durable across reopen and shared by two handles, coded failures."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cmcp_core.audit_store_rows import Row
from cmcp_core.audit_store_sqlite import SqliteAuditStore
from cmcp_core.errors import CmcpError, Code


def _row(seq: int, digest: str = "a", chain: str = "s") -> Row:
    raw = json.dumps({"kid": "k", "session_id": chain, "seq": seq, "hash": digest}).encode()
    return Row(kid="k", chain=chain, seq=seq, hash=digest, kind="decision", ts=seq, entry=raw)


def test_wal_mode_and_entries_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.sqlite"  # the directory is created
    store = SqliteAuditStore(path)
    assert store.append([_row(0), _row(1)]) == 2
    other = SqliteAuditStore(path)  # a second handle (another gateway process on the node)
    assert other.append([_row(1), _row(2)]) == 1
    store.close()
    other.close()
    reopened = SqliteAuditStore(path)
    assert [json.loads(e)["seq"] for e in reopened.entries("k", "s")] == [0, 1, 2]
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    reopened.close()


def test_a_fork_in_a_batch_stores_none_of_it(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    store.append([_row(0)])
    with pytest.raises(CmcpError) as err:
        store.append([_row(1), _row(0, digest="b")])
    assert err.value.code is Code.AUDIT_FORK
    assert len(store.entries("k", "s")) == 1  # the batch rolled back as one
    store.close()


def test_an_unusable_file_is_a_coded_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CmcpError) as err:
        SqliteAuditStore(blocker / "audit.sqlite")
    assert err.value.code is Code.AUDIT_STORE_UNAVAILABLE


def test_a_closed_database_is_a_coded_error(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    store.close()
    for call in (lambda: store.append([_row(0)]), store.chains, lambda: store.entries("k", "s")):
        with pytest.raises(CmcpError) as err:
            call()
        assert err.value.code is Code.AUDIT_STORE_UNAVAILABLE
