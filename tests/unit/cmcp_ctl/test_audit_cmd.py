"""``cmcpctl audit verify``: an exported chain checked offline, per session, with exit codes 0/1/2.

The chains come from a real in-process enclave (simulated TEE); the chain rules themselves are
tested in ``tests/unit/cmcp_core/test_audit.py``. This file tests the command: input forms (JSON
lines, a JSON array, stdin), the key forms, several sessions, partial exports and its errors.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cmcp_core import audit_store_verify
from cmcp_core.audit import verify_chain
from cmcp_core.audit_store import chain_entries, open_audit_store, rows_of
from cmcp_core.crypto import public_jwk
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.enclave import carried, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from tests.helpers.enclave_calls import decide, exported, known
from tests.paths import EXAMPLES

Chain = tuple[Enclave, list[dict[str, Any]]]


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="s")
    decide(enc, "email.send_external", {"to": ["bob@partner.example"]}, session="s")
    decide(enc, "résumé.parse", {"body": "Zoë"}, session="s")
    enc.close(known(enc, "s"))
    return enc, exported(enc, "s")


def _jsonl(path: Path, entries: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    return str(path)


def _key(enc: Enclave) -> str:
    return json.dumps(public_jwk(enc.public_key))


def test_cli_verifies_and_rejects(chain: Chain, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    enc, entries = chain
    key = tmp_path / "key.jwk"
    key.write_text(json.dumps(public_jwk(enc.public_key)))
    good = tmp_path / "audit.jsonl"
    good.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n", encoding="utf-8")
    assert cmcpctl(["audit", "verify", str(good), "--key", str(key),
                    "--expected-tip", enc.closed[known(enc, "s")].tip]) == 0
    assert f"ok {known(enc, 's')}: 5 entries" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(e) for e in entries[:2] + entries[3:]) + "\n")
    assert cmcpctl(["audit", "verify", str(bad), "--key", json.dumps(public_jwk(enc.public_key)),
                    "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["sessions"][known(enc, "s")]["code"] == "AUDIT_SEQ_GAP"



def test_a_json_array_and_stdin_are_read_too(chain: Chain, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    enc, entries = chain
    array = tmp_path / "audit.json"
    array.write_text(json.dumps(entries, indent=2, ensure_ascii=False), encoding="utf-8")
    assert cmcpctl(["audit", "verify", str(array), "--key", _key(enc)]) == 0
    assert capsys.readouterr().out.startswith(f"ok {known(enc, 's')}: 5 entries, tip sha256:")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(e) for e in entries)))
    assert cmcpctl(["audit", "verify", "-", "--key", _key(enc), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["sessions"][known(enc, "s")]["count"] == 5
    assert doc["sessions"][known(enc, "s")]["tip"] == enc.closed[known(enc, "s")].tip


def test_a_cut_tail_fails_against_the_expected_tip(
        chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, entries = chain
    cut = _jsonl(tmp_path / "cut.jsonl", entries[:-1])
    assert cmcpctl(["audit", "verify", cut, "--key", _key(enc)]) == 0, "without a tip a cut tail is invisible"
    capsys.readouterr()
    tip = enc.closed[known(enc, "s")].tip
    assert cmcpctl(["audit", "verify", cut, "--key", _key(enc), "--expected-tip", tip]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"FAILED {known(enc, 's')}: AUDIT_") and " at entry " in err


def test_several_sessions_are_verified_each_on_its_own(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    for session in ("one", "two"):
        decide(enc, "web.search", {"query": session}, session=session)
        enc.close(known(enc, session))
    one, two = exported(enc, "one"), exported(enc, "two")
    mixed = [e for pair in zip(one, two, strict=True) for e in pair]  # interleaved, as a log would be
    path = _jsonl(tmp_path / "mixed.jsonl", mixed)
    assert cmcpctl(["audit", "verify", path, "--key", _key(enc)]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted([
        f"ok {known(enc, 'one')}: {len(one)} entries, tip {enc.closed[known(enc, 'one')].tip}",
        f"ok {known(enc, 'two')}: {len(two)} entries, tip {enc.closed[known(enc, 'two')].tip}",
    ])
    edited = [dict(e) for e in mixed]
    edited[-1]["data"] = {**edited[-1]["data"], "extra": 1}  # the last entry belongs to "two"
    path = _jsonl(tmp_path / "edited.jsonl", edited)
    assert cmcpctl(["audit", "verify", path, "--key", _key(enc), "--json"]) == 1
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    assert sessions[known(enc, "one")]["ok"] is True and sessions[known(enc, "two")]["ok"] is False


def test_expected_tip_is_not_silently_dropped_for_several_sessions(tmp_path: Path) -> None:
    """A tip names one chain: with several sessions the command refuses rather than check none."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    for session in ("one", "two"):
        decide(enc, "web.search", {"query": session}, session=session)
        enc.close(known(enc, session))
    one, two = exported(enc, "one"), exported(enc, "two")
    path = _jsonl(tmp_path / "cut.jsonl", one + two[:-1])  # "two" lost its closing entry
    tip = enc.closed[known(enc, "two")].tip
    assert cmcpctl(["audit", "verify", path, "--key", _key(enc), "--expected-tip", tip]) != 0


def test_a_partial_export_verifies_from_its_first_seq(chain: Chain,
                                                      tmp_path: Path) -> None:
    enc, entries = chain
    tail = _jsonl(tmp_path / "tail.jsonl", entries[2:])
    assert cmcpctl(["audit", "verify", tail, "--key", _key(enc), "--from-seq", str(entries[2]["seq"])]) == 0
    assert cmcpctl(["audit", "verify", tail, "--key", _key(enc)]) == 1, "a tail is not a chain from genesis"


def test_another_key_fails_every_chain(chain: Chain, tmp_path: Path) -> None:
    _, entries = chain
    other = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "other")
    assert cmcpctl(["audit", "verify", _jsonl(tmp_path / "a.jsonl", entries), "--key", _key(other)]) == 1


def test_an_empty_export_verifies_nothing_and_fails(tmp_path: Path, chain: Chain,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    enc, _ = chain
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert cmcpctl(["audit", "verify", str(empty), "--key", _key(enc), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"ok": False, "sessions": {}}


def test_unreadable_inputs_are_usage_errors(chain: Chain, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    enc, entries = chain
    good = _jsonl(tmp_path / "a.jsonl", entries)
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text('{"seq": 0\n', encoding="utf-8")
    cases = [
        [good, "--key", "{not json"],
        [good, "--key", str(tmp_path / "no-such-key.jwk")],
        [good, "--key", '{"kty": "RSA"}'],
        [str(tmp_path / "no-such-export.jsonl"), "--key", _key(enc)],
        [str(not_json), "--key", _key(enc)],
    ]
    for argv in cases:
        assert cmcpctl(["audit", "verify", *argv]) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("cmcpctl audit: "), argv


def test_key_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cmcpctl(["audit", "verify", "x.jsonl"])
    assert caught.value.code == 2 and "--key" in capsys.readouterr().err



# --- the audit store: list, export, verify with ledgers ---------------------------------------

def _stored_trail(tmp_path: Path) -> tuple[Enclave, str, dict[str, str]]:
    """An enclave's trail in a SQLite store: a closed session, an open one, its ledger."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "enc")
    decide(enc, "web.search", {"query": "a"}, session="closed", principal="alice")
    decide(enc, "web.search", {"query": "b"}, session="open", principal="bob")
    enc.close(known(enc, "closed"))
    spec = f"sqlite:{tmp_path / 'audit.sqlite'}"
    store = open_audit_store(spec)
    while len(enc.outbox):
        store.append(rows_of(carried(enc)))
    store.close()
    return enc, spec, {"closed": known(enc, "closed"), "open": known(enc, "open")}


def test_list_and_export_read_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, spec, ids = _stored_trail(tmp_path)
    assert cmcpctl(["audit", "list", "--store", spec, "--json"]) == 0
    rows = {r["chain"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[ids["closed"]]["principal"] == "alice" and rows[ids["open"]]["principal"] == "bob"
    assert rows[ids["closed"]]["entries"] == 3 and rows[enc.ledger_id]["entries"] == 5  # 2 adopts
    out = tmp_path / "closed.jsonl"
    # '--': the id begins with the enclave's base64url key id, which begins with '-' one time in 64
    assert cmcpctl(["audit", "export", "--store", spec, "--out", str(out), "--", ids["closed"]]) == 0
    assert cmcpctl(["audit", "verify", str(out), "--key", _key(enc),
                    "--expected-tip", enc.closed[ids["closed"]].tip]) == 0
    assert cmcpctl(["audit", "export", "no-such-session", "--store", spec]) == 2


def test_export_takes_a_session_id_that_begins_with_a_dash(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _enc, spec, _ids = _stored_trail(tmp_path)
    dashed = "-" + "A" * 15 + "." + "B" * 22  # the shape session_id.mint gives a kid that begins with '-'
    assert cmcpctl(["audit", "export", "--store", spec, "--", dashed]) == 2
    assert f"the store holds no chain {dashed!r}" in capsys.readouterr().err, "read as the id, not a flag"


def test_verify_checks_every_chain_and_ledger_from_the_store(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    enc, spec, ids = _stored_trail(tmp_path)
    assert cmcpctl(["audit", "verify", "--store", spec, "--key", _key(enc), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    states = {c["chain"]: c["state"] for c in doc["chains"]}
    assert doc["ok"] and states == {enc.ledger_id: "ledger", ids["closed"]: "closed", ids["open"]: "open"}


def _delete(spec: str, chain: str, *, from_seq: int = 0) -> None:
    with sqlite3.connect(spec.removeprefix("sqlite:")) as db:
        db.execute("DELETE FROM audit_entries WHERE chain = ? AND seq >= ?", (chain, from_seq))


def test_a_withheld_session_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Attacker with write access to the store deletes every row of one session."""
    enc, spec, ids = _stored_trail(tmp_path)
    _delete(spec, ids["open"])
    assert cmcpctl(["audit", "verify", "--store", spec, "--key", _key(enc)]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {ids['open']}: AUDIT_WITHHELD" in err


def test_weakened_verify_without_the_ledger_misses_the_withheld_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches the hole: verifying only the chains the store holds (no ledger)
    passes a store from which a whole session was deleted."""
    enc, spec, ids = _stored_trail(tmp_path)
    _delete(spec, ids["open"])

    def chains_only(store: Any, kid: str, key: Any, names: list[str], kids_of: Any) -> list[Any]:
        findings = []
        for name in names:
            result = verify_chain([json.loads(r) for r in store.entries(kid, name)], key)
            findings.append(audit_store_verify.Finding(kid, name, result.count, result.tip, result.code))
        return findings

    monkeypatch.setattr(audit_store_verify, "_verify_enclave", chains_only)
    assert cmcpctl(["audit", "verify", "--store", spec, "--key", _key(enc)]) == 0


def test_a_closed_session_cut_short_of_its_ledger_close_is_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, spec, ids = _stored_trail(tmp_path)
    _delete(spec, ids["closed"], from_seq=2)  # its close entry, and nothing tells but the ledger
    assert cmcpctl(["audit", "verify", "--store", spec, "--key", _key(enc)]) == 1
    assert f"FAILED {ids['closed']}: AUDIT_TRUNCATED" in capsys.readouterr().err


def test_two_chains_for_one_session_id_are_a_fork(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Attacker replays a session's entries under another enclave's key id: one id, two chains."""
    enc, spec, ids = _stored_trail(tmp_path)
    other = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "other")
    store = open_audit_store(spec)
    copied = [json.loads(raw) for raw in chain_entries(store, ids["closed"])]
    store.append(rows_of([json.dumps({**e, "kid": other.kid}).encode() for e in copied]))
    store.close()
    assert cmcpctl(["audit", "verify", "--store", spec, "--key", _key(enc), "--key", _key(other)]) == 1
    assert f"FAILED {ids['closed']}: AUDIT_FORK" in capsys.readouterr().err


def test_store_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, spec, _ = _stored_trail(tmp_path)
    for argv in (["verify", "--key", _key(enc)], ["verify", "x.jsonl", "--store", spec, "--key", _key(enc)],
                 ["verify", "--store", "mysql://x", "--key", _key(enc)],
                 ["verify", "--store", spec, "--key", _key(enc), "--expected-tip", "t"],
                 ["list", "--store", "nope"]):
        assert cmcpctl(["audit", *argv]) == 2, argv
        assert capsys.readouterr().err.startswith("cmcpctl audit: "), argv
    # a store without the key of the enclave that wrote it cannot be vouched for
    assert cmcpctl(["audit", "verify", "--store", spec, "--key", _key(inprocess_enclave(
        EXAMPLES / "realistic", tmp_path / "stranger"))]) == 1
