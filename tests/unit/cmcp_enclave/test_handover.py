"""Taking a principal over from the durable trail, played against real in-process enclaves.

The attacker is a host or gateway that wants a principal to start clean on the enclave it moved
to: it sends no trail, a trail with forged, edited or foreign entries, entries signed by a key
no attestation vouches for, a peer attestation of another guest or bundle, or a trail that stops
short of the window. Each is refused (``PRINCIPAL_NOT_HELD`` / ``PRINCIPAL_TRAIL_INVALID``); an
honest trail, from this enclave or an attested peer, carries the taint over, and the ledger says
what the takeover started from. A weakened enclave that starts unknown principals clean shows
the taint would be shed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmcp_core.audit_store import open_audit_store, rows_of, trail_for
from cmcp_core.errors import Code
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.enclave import NO_TRAIL, carried, inprocess_enclave
from cmcp_enclave import handover
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.judging import RequestError
from tests.helpers.enclave_calls import decide, exported, peer_attestation
from tests.paths import EXAMPLES

MAIL = {"to": ["bob@partner.example"]}
PHI = ("ehr.read_patient_record", {"patient_id": "p"})
WHO = "agent-a"


def _tainted_trail(enc: Enclave, tmp_path: Path, *, as_resource: bool = False) -> enclave_pb2.PrincipalTrail:
    """``enc`` let the principal read PHI (with the tool, or the record as a resource); its trail
    as a gateway builds it from the store."""
    read = decide(enc, "ehr://patients/p", method="resources/read") if as_resource else decide(enc, *PHI)
    assert read.document["decision"] == "allow"
    store = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    while len(enc.outbox):
        store.append(rows_of(carried(enc)))
    report_nonce = peer_attestation(enc)
    store.put_attestation(enc.kid, report_nonce.nonce, report_nonce.attestation.SerializeToString())
    try:
        return trail_for(store, WHO, owner="", bundle_hash=enc.bundle_hash, now=enc.clock())
    finally:
        store.close()


def _mail_on(enc: Enclave, trail: enclave_pb2.PrincipalTrail) -> str:
    session = enc.open_session(WHO, trail=trail)
    return str(decide(enc, "email.send_external", MAIL, session=session).document["decision"])


def _refused(enc: Enclave, trail: enclave_pb2.PrincipalTrail | None) -> Code:
    with pytest.raises(RequestError) as caught:
        enc.open_session(WHO, trail=trail)
    return caught.value.code


def test_an_unknown_principal_is_refused_without_a_trail_and_started_from_an_empty_one(
        tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    assert _refused(enc, None) is Code.PRINCIPAL_NOT_HELD
    assert _mail_on(enc, NO_TRAIL) == "allow"
    adopted = [e for e in exported(enc, enc.ledger_id) if e["kind"] == "adopt"]
    assert [(e["data"]["principal"], e["data"]["entries"], e["data"]["newest"]) for e in adopted] == [
        (WHO, 0, None)]


def test_a_peers_trail_carries_the_taint_to_the_enclave_that_takes_over(tmp_path: Path) -> None:
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    trail = _tainted_trail(old, tmp_path)
    assert len(trail.entries) == 1 and len(trail.peers) == 1
    assert _mail_on(new, trail) == "deny"
    (adopted,) = [e for e in exported(new, new.ledger_id) if e["kind"] == "adopt"]
    assert adopted["data"]["entries"] == 1
    assert adopted["data"]["newest"] == json.loads(trail.entries[0])["hash"]


def test_a_record_read_as_a_resource_is_replayed_by_the_enclave_that_takes_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    trail = _tainted_trail(old, tmp_path, as_resource=True)
    assert len(trail.entries) == 1 and _mail_on(new, trail) == "deny"
    # Weakened: a takeover that replays tool calls only (as before resources were decided) sheds it.
    newer = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "newer")
    monkeypatch.setattr(handover, "allowed_call", lambda entry: entry["data"].get("method") == "tools/call"
                        and entry["data"].get("effective") == "allow")
    assert _mail_on(newer, trail) == "allow"


def test_weakened_enclave_starting_unknown_principals_clean_sheds_the_taint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The property the refusal holds: an enclave that starts a principal clean when it holds
    nothing of it lets the partner mail through after the PHI read on the other enclave."""
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    trail = _tainted_trail(old, tmp_path)
    monkeypatch.setattr(Enclave, "_take_over", lambda self, principal, trail: self._principal(principal))
    assert _mail_on(new, trail) == "allow"


def _edited(trail: enclave_pb2.PrincipalTrail, change: dict[str, object]) -> enclave_pb2.PrincipalTrail:
    entry = json.loads(trail.entries[0])
    entry.update(change)
    forged = enclave_pb2.PrincipalTrail()
    forged.CopyFrom(trail)
    forged.entries[0] = json.dumps(entry).encode()
    return forged


@pytest.mark.parametrize("attack", ["edited entry", "no peer attestation", "peer of another bundle",
                                    "another principal", "short of the window", "not json"])
def test_a_trail_that_does_not_verify_refuses_the_principal(tmp_path: Path, attack: str) -> None:
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    trail = _tainted_trail(old, tmp_path)
    if attack == "edited entry":  # a host turns the PHI read into something harmless
        entry = json.loads(trail.entries[0])
        entry["data"]["tool"] = "web.search"
        trail = _edited(trail, {"data": entry["data"]})
    elif attack == "no peer attestation":
        del trail.peers[:]
    elif attack == "peer of another bundle":
        other = tmp_path / "other-bundle"
        shutil.copytree(EXAMPLES / "realistic", other)
        policy = other / "policies" / "taint.cedar"
        policy.write_text(policy.read_text() + "\n// another bundle\n")
        impostor = inprocess_enclave(other, tmp_path / "impostor")  # its entries claim the trail
        assert impostor.bundle_hash != old.bundle_hash
        trail = _tainted_trail(impostor, tmp_path / "impostor")
    elif attack == "another principal":
        trail = _edited(trail, {"data": {**json.loads(trail.entries[0])["data"], "principal": "agent-b"}})
    elif attack == "short of the window":
        trail.since_ms = int(new.clock() * 1000)
    else:
        trail.entries[0] = b"{"
    assert _refused(new, trail) is Code.PRINCIPAL_TRAIL_INVALID
    assert WHO not in new.principals  # nothing was started


def test_an_entry_sent_twice_is_replayed_once(tmp_path: Path) -> None:
    """A trail that repeats an entry (a retried store read, or a gateway padding it) counts each
    call once: the adopt names one entry and the principal holds one call, not two."""
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    trail = _tainted_trail(old, tmp_path)
    trail.entries.append(trail.entries[0])
    assert _mail_on(new, trail) == "deny"
    (adopted,) = [e for e in exported(new, new.ledger_id) if e["kind"] == "adopt"]
    assert adopted["data"]["entries"] == 1
    now = new.clock()  # the denied mail is not a call the principal made
    assert new.principals.get(WHO, now).view(now, new.principals.window).call_count == 1


def test_entries_older_than_the_window_are_not_replayed(tmp_path: Path) -> None:
    """A decision that has left the bundle's window no longer binds the principal on the enclave
    it held it, so a takeover after that starts without it (and the ledger says so)."""
    old, new = (inprocess_enclave(EXAMPLES / "realistic", tmp_path / n) for n in ("old", "new"))
    trail = _tainted_trail(old, tmp_path)
    later = old.clock() + new.principals.window + 1
    new.clock = lambda: later
    assert _mail_on(new, trail) == "allow"
    (adopted,) = [e for e in exported(new, new.ledger_id) if e["kind"] == "adopt"]
    assert (adopted["data"]["entries"], adopted["data"]["newest"]) == (0, None)
