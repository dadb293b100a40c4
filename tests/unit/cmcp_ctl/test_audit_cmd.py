"""``cmcpctl audit verify``: an exported chain checked offline, per session, with exit codes 0/1/2.

The chains come from a real in-process enclave (simulated TEE); the chain rules themselves are
tested in ``tests/unit/cmcp_core/test_audit.py``. This file tests the command: input forms (JSON
lines, a JSON array, stdin), the key forms, several sessions, partial exports and its errors.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.crypto import public_jwk
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.enclave import inprocess_enclave
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
                    "--expected-tip", enc.closed["s"].tip]) == 0
    assert "ok s: 5 entries" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(e) for e in entries[:2] + entries[3:]) + "\n")
    assert cmcpctl(["audit", "verify", str(bad), "--key", json.dumps(public_jwk(enc.public_key)),
                    "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["sessions"]["s"]["code"] == "AUDIT_SEQ_GAP"



def test_a_json_array_and_stdin_are_read_too(chain: Chain, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    enc, entries = chain
    array = tmp_path / "audit.json"
    array.write_text(json.dumps(entries, indent=2, ensure_ascii=False), encoding="utf-8")
    assert cmcpctl(["audit", "verify", str(array), "--key", _key(enc)]) == 0
    assert capsys.readouterr().out.startswith("ok s: 5 entries, tip sha256:")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(json.dumps(e) for e in entries)))
    assert cmcpctl(["audit", "verify", "-", "--key", _key(enc), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["sessions"]["s"]["count"] == 5
    assert doc["sessions"]["s"]["tip"] == enc.closed["s"].tip


def test_a_cut_tail_fails_against_the_expected_tip(
        chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, entries = chain
    cut = _jsonl(tmp_path / "cut.jsonl", entries[:-1])
    assert cmcpctl(["audit", "verify", cut, "--key", _key(enc)]) == 0, "without a tip a cut tail is invisible"
    capsys.readouterr()
    assert cmcpctl(["audit", "verify", cut, "--key", _key(enc), "--expected-tip", enc.closed["s"].tip]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAILED s: AUDIT_") and " at entry " in err


def test_several_sessions_are_verified_each_on_its_own(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    for session in ("one", "two"):
        decide(enc, "web.search", {"query": session}, session=session)
        enc.close(session)
    one, two = exported(enc, "one"), exported(enc, "two")
    mixed = [e for pair in zip(one, two, strict=True) for e in pair]  # interleaved, as a log would be
    path = _jsonl(tmp_path / "mixed.jsonl", mixed)
    assert cmcpctl(["audit", "verify", path, "--key", _key(enc)]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == [
        f"ok one: {len(one)} entries, tip {enc.closed['one'].tip}",
        f"ok two: {len(two)} entries, tip {enc.closed['two'].tip}",
    ]
    edited = [dict(e) for e in mixed]
    edited[-1]["data"] = {**edited[-1]["data"], "extra": 1}  # the last entry belongs to "two"
    path = _jsonl(tmp_path / "edited.jsonl", edited)
    assert cmcpctl(["audit", "verify", path, "--key", _key(enc), "--json"]) == 1
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    assert sessions["one"]["ok"] is True and sessions["two"]["ok"] is False


def test_expected_tip_is_not_silently_dropped_for_several_sessions(tmp_path: Path) -> None:
    """A tip names one chain: with several sessions the command refuses rather than check none."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    for session in ("one", "two"):
        decide(enc, "web.search", {"query": session}, session=session)
        enc.close(session)
    one, two = exported(enc, "one"), exported(enc, "two")
    path = _jsonl(tmp_path / "cut.jsonl", one + two[:-1])  # "two" lost its closing entry
    tip = enc.closed["two"].tip
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
        assert out == "" and err.startswith("error: "), argv


def test_key_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cmcpctl(["audit", "verify", "x.jsonl"])
    assert caught.value.code == 2 and "--key" in capsys.readouterr().err
