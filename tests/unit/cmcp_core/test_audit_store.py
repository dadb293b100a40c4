"""The audit store contract on both backends (real SQLite file, real PostgreSQL): idempotent,
fork-refusing, lossless over a long session, coded failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmcp_core.audit import verify_chain
from cmcp_core.audit_store import AuditStore, chain_entries, open_audit_store, principal_trail, rows_of
from cmcp_core.audit_store_postgres import PostgresAuditStore
from cmcp_core.audit_store_sqlite import SqliteAuditStore
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.enclave import carried, inprocess_enclave
from cmcp_devkit.postgres import PostgresServer
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide, sid
from tests.paths import EXAMPLES


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    if request.param == "sqlite":
        opened = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        opened = open_audit_store(server.dsn)  # shared database: each test's enclave has its own kid
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def enc(tmp_path: Path) -> Enclave:
    return inprocess_enclave(EXAMPLES / "realistic", tmp_path)


def _answer(enc: Enclave) -> list[bytes]:
    """What the enclave's next answer would carry."""
    taken: list[bytes] = []
    while len(enc.outbox):
        taken.extend(carried(enc))
    return taken


def test_the_backends_are_chosen_by_spec(tmp_path: Path, postgres_server: PostgresServer) -> None:
    sqlite = open_audit_store(f"sqlite:{tmp_path / 'a.sqlite'}")
    assert isinstance(sqlite, SqliteAuditStore)
    sqlite.close()
    pg = open_audit_store(postgres_server.dsn)
    assert isinstance(pg, PostgresAuditStore)
    pg.close()
    for bad in ("", "sqlite:", "memory", "mysql://x"):
        with pytest.raises(ValueError):
            open_audit_store(bad)


def test_ten_thousand_decisions_in_one_session_lose_nothing(store: AuditStore, enc: Enclave) -> None:
    session = sid(enc, "long")
    for i in range(10_000):
        decide(enc, "web.search", {"query": str(i)}, session="long")
        if i % 100 == 99:
            store.append(rows_of(_answer(enc)))
    done = enc.close(session)
    store.append(rows_of(_answer(enc)))
    entries = [json.loads(raw) for raw in chain_entries(store, session)]
    result = verify_chain(entries, enc.public_key, expected_tip=done.tip)
    assert result.ok and result.count == 10_002
    ledger = [json.loads(raw) for raw in chain_entries(store, enc.ledger_id)]
    assert verify_chain(ledger, enc.public_key, expected_tip=enc.ledger_tip).ok


def test_appending_the_same_entries_again_is_a_no_op(store: AuditStore, enc: Enclave) -> None:
    decide(enc, "web.search", {"query": "x"}, session="s")
    entries = _answer(enc)
    assert store.append(rows_of(entries)) == len(entries) == 4  # ledger adopt + open, session open, decision
    assert store.append(rows_of(entries)) == 0  # a gateway resending after a timeout
    assert len(chain_entries(store, sid(enc, "s"))) == 2
    [summary] = [c for c in store.chains() if c.chain == sid(enc, "s")]
    assert summary.kid == enc.kid and summary.entries == 2 and summary.principal == "agent-a"


def test_a_different_entry_for_a_held_place_is_a_fork(store: AuditStore, enc: Enclave) -> None:
    """Attacker: a second, different entry for (kid, session, seq) — replayed from another chain
    or edited — is refused with AUDIT_FORK, and the held entry stays as it was."""
    decide(enc, "web.search", {"query": "x"}, session="s")
    entries = _answer(enc)
    store.append(rows_of(entries))
    held = chain_entries(store, sid(enc, "s"))
    forged = json.loads(entries[-1])
    forged["data"]["tool"] = "shell.exec"
    forged["hash"] = "sha256:" + "0" * 64
    with pytest.raises(CmcpError) as err:
        store.append(rows_of([json.dumps(forged).encode()]))
    assert err.value.code is Code.AUDIT_FORK
    assert chain_entries(store, sid(enc, "s")) == held


def test_weakened_store_that_ignores_conflicts_hides_the_fork(tmp_path: Path, enc: Enclave,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches the hole: without comparing the held entry, the forged one is
    silently dropped and nobody learns that two entries claimed one place."""
    store = SqliteAuditStore(tmp_path / "weak.sqlite")
    monkeypatch.setattr(SqliteAuditStore, "_check_held", lambda self, rows: None)
    decide(enc, "web.search", {"query": "x"}, session="s")
    entries = _answer(enc)
    store.append(rows_of(entries))
    forged = json.loads(entries[-1])
    forged["hash"] = "sha256:" + "1" * 64
    assert store.append(rows_of([json.dumps(forged).encode()])) == 0  # no error: the fork went unseen
    store.close()


def test_not_an_entry_is_malformed() -> None:
    for raw in (b"not json", b"{}", json.dumps({"kid": "k", "session_id": "s", "seq": 0, "hash": "h",
                                                 "kind": "open", "ts": 1, "data": []}).encode()):
        with pytest.raises(CmcpError) as err:
            rows_of([raw])
        assert err.value.code is Code.AUDIT_MALFORMED


def test_a_name_two_enclaves_chains_carry_is_a_fork(store: AuditStore, tmp_path: Path) -> None:
    one = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "one")
    two = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "two")
    decide(one, "web.search", {"query": "x"}, session="s")
    entries = _answer(one)
    store.append(rows_of(entries))
    name = sid(one, "s")
    assert chain_entries(store, name)
    # another enclave's entry under the same session name (a forged or replayed chain)
    copy = next(e for e in map(json.loads, entries) if e["session_id"] == name)
    copy["kid"] = two.kid
    store.append(rows_of([json.dumps(copy).encode()]))
    with pytest.raises(CmcpError) as err:
        chain_entries(store, name)
    assert err.value.code is Code.AUDIT_FORK


def test_a_principals_trail_holds_every_allowed_decision_since_what_it_claims(store: AuditStore,
                                                                              enc: Enclave) -> None:
    """Capped, the trail moves its ``since_ms`` up instead of claiming a time it does not cover."""
    who = f"trail-{enc.kid[:12]}"  # the PostgreSQL database is shared by every test
    for n in range(5):
        decide(enc, "web.search", {"query": str(n)}, session=f"t{n % 2}", principal=who)
    store.append(rows_of(_answer(enc)))
    allowed = sorted(int(json.loads(raw)["ts"]) for raw in (
        e for c in store.chains() if c.principal == who for e in store.entries(c.kid, c.chain))
        if json.loads(raw)["kind"] == "decision")
    whole = principal_trail(store, who, 0, 10)
    assert len(whole.entries) == 5 and whole.since_ms == 0 and whole.kids == {enc.kid}
    capped = principal_trail(store, who, 0, 3)
    kept = sorted(int(json.loads(raw)["ts"]) for raw in capped.entries)
    assert capped.since_ms > 0 and len(kept) <= 3 and kept == [ts for ts in allowed if ts >= capped.since_ms]


def test_an_enclaves_attestation_is_kept_once(store: AuditStore, enc: Enclave) -> None:
    store.put_attestation(enc.kid, b"nonce-1", b"first")
    store.put_attestation(enc.kid, b"nonce-2", b"second")  # a re-attestation: the first one stays
    assert store.attestations([enc.kid, "never-seen"]) == {enc.kid: (b"nonce-1", b"first")}
