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


def _decision_sized(seq: int) -> Row:
    """A row the size of a real decision entry (~1.5 KB: the signed decision, its signature, hashes)."""
    raw = json.dumps({"kid": "k", "seq": seq, "data": {"policies": ["p" * 40] * 30}}).encode()
    return Row(kid="k", chain="s", seq=seq, hash=f"h{seq}", kind="decision", ts=seq, entry=raw)


def _file_bytes_per_entry(path: Path, entries: int) -> float:
    db = sqlite3.connect(path)
    pages, size = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    return pages * size / entries


def test_decision_sized_entries_stay_in_their_leaf_pages(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    rows = [_decision_sized(seq) for seq in range(300)]
    assert 1300 < len(rows[0].entry) < 1700
    for i in range(0, 300, 2):  # one transaction per call, as the gateway writes
        store.append(rows[i:i + 2])
    store.close()
    assert _file_bytes_per_entry(tmp_path / "audit.sqlite", 300) < 2 * len(rows[0].entry)


def test_a_without_rowid_table_would_spill_every_entry_into_an_overflow_page(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weakened store (the table before ADR 0032) fails the check above."""
    import cmcp_core.audit_store_sqlite as module

    monkeypatch.setattr(module, "_SCHEMA", module._SCHEMA.replace(
        "UNIQUE (kid, chain, seq))", "PRIMARY KEY (kid, chain, seq)) WITHOUT ROWID"))
    store = module.SqliteAuditStore(tmp_path / "audit.sqlite")
    rows = [_decision_sized(seq) for seq in range(300)]
    for i in range(0, 300, 2):
        store.append(rows[i:i + 2])
    store.close()
    assert _file_bytes_per_entry(tmp_path / "audit.sqlite", 300) > 2.5 * len(rows[0].entry)
