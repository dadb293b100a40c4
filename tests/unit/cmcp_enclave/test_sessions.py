"""Session state inside the enclave: taint across calls, monotone sensitivity from the
measured catalog, call history, idle expiry, session bound, principal pinning, audited reset.
What a new session cannot shed (the principal's state) is in ``test_principals``."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import session_id as session_ids
from cmcp_core.audit import reset_payload, verify_chain
from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_core.trust_record import record_ledger
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, carried, inprocess_enclave
from cmcp_enclave.enclave import Enclave, UpstreamOutcome
from cmcp_enclave.judging import RequestError
from cmcp_enclave.sessions import EnclaveLimits, PolicySession
from tests.helpers.enclave_calls import decide, drained, exported, known, sid
from tests.paths import EXAMPLES


class FakeClock:
    """Deterministic time for expiry tests (no sleeping, no timing assertions)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def enc(tmp_path: Path) -> Enclave:
    return inprocess_enclave(EXAMPLES / "realistic", tmp_path)


def test_taint_after_phi_blocks_external_send_in_that_session(enc: Enclave) -> None:
    assert decide(enc, "web.search", {"query": "x"}, session="clean", principal="bob").document[
        "decision"] == "allow"
    phi = decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="t")
    assert phi.document["decision"] == "allow"
    # a later call in the same session to an external tool is denied by the taint rule...
    res = decide(enc, "email.send_external", {"to": ["bob@partner.example"]}, session="t")
    assert res.document["policy_ids"] == ["policies/taint.cedar#no-external-send-after-phi"]
    # ...and several calls later still (taint is monotone)
    decide(enc, "slack.post_internal", {"channel": "c"}, session="t")
    assert decide(enc, "email.send_external", {"to": ["bob@partner.example"]},
                  session="t").document["decision"] == "deny"
    # another principal is unaffected
    assert decide(enc, "email.send_external", {"to": ["bob@partner.example"]},
                  session="clean", principal="bob").document["decision"] == "allow"


def test_sensitivity_rises_monotonically_from_the_catalog(enc: Enclave) -> None:
    decide(enc, "deals.read_pipeline", {"deal_id": "d"}, session="s")  # restricted
    decide(enc, "slack.post_internal", {"channel": "c"}, session="s")  # internal
    session = enc.sessions[known(enc, "s")]
    assert enc.engine.levels[session.max_rank] == "restricted"
    assert session.tags == {"mnpi"} and session.call_count == 2
    assert session.tools_called == {"deals.read_pipeline", "slack.post_internal"}
    assert session.previous_tool == "slack.post_internal"
    # restricted data may not reach an internet tool
    res = decide(enc, "web.search", {"query": "q"}, session="s")
    assert "policies/taint.cedar#restricted-stays-inside" in res.document["policy_ids"]


def test_denied_calls_do_not_taint(enc: Enclave) -> None:
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="s", audience="urn:wrong")
    assert enc.sessions[known(enc, "s")].tags == set() and enc.sessions[known(enc, "s")].call_count == 0
    assert decide(enc, "email.send_external", {"to": ["bob@partner.example"]},
                  session="s").document["decision"] == "allow"


def test_session_is_pinned_to_its_principal(enc: Enclave) -> None:
    decide(enc, "web.search", {"query": "x"}, session="s", principal="alice")
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session="s", principal="mallory")
    assert err.value.code == Code.SESSION_PRINCIPAL_MISMATCH


def test_idle_sessions_expire_and_closed_sessions_refuse_decisions(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(idle_timeout=60))
    clock = FakeClock()
    enc.clock = clock
    decide(enc, "web.search", {"query": "x"}, session="old")
    clock.now += 30
    decide(enc, "web.search", {"query": "x"}, session="young")
    clock.now += 45
    assert enc.expire_idle() == [known(enc, "old")]
    assert set(enc.sessions) == {known(enc, "young")}
    assert enc.closed[known(enc, "old")].record["policy"]["bundle_hash"] == enc.bundle_hash
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session="old")
    assert err.value.code == Code.SESSION_CLOSED
    entries = exported(enc, "old")
    assert entries[-1]["kind"] == "close" and entries[-1]["data"]["reason"] == "idle-timeout"
    assert verify_chain(entries, enc.public_key, expected_tip=enc.closed[known(enc, "old")].tip).ok


def test_max_sessions_is_enforced(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(max_sessions=2))
    decide(enc, "web.search", {"query": "x"}, session="a")
    decide(enc, "web.search", {"query": "x"}, session="b")
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session="c")
    assert err.value.code == Code.SESSION_LIMIT
    enc.close(known(enc, "a"))
    assert decide(enc, "web.search", {"query": "x"}, session="c").document["decision"] == "allow"


def test_reset_needs_an_operator_signature_and_is_audited(tmp_path: Path) -> None:
    operator = Ed25519PrivateKey.generate()
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, operator_keys=[operator.public_key()])
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="s")
    seq = enc.sessions[known(enc, "s")].seq
    payload = reset_payload(session_id=known(enc, "s"), actor="op", reason="r", seq=seq)
    forged = Ed25519PrivateKey.generate().sign(payload)
    with pytest.raises(RequestError) as err:
        enc.reset(session_id=known(enc, "s"), actor="op", reason="r", signature=forged)
    assert err.value.code == Code.RESET_UNAUTHORIZED
    good = operator.sign(reset_payload(session_id=known(enc, "s"), actor="op", reason="r", seq=seq))
    enc.reset(session_id=known(enc, "s"), actor="op", reason="r", signature=good)
    assert enc.sessions[known(enc, "s")].tags == set()
    assert decide(enc, "email.send_external", {"to": ["bob@partner.example"]},
                  session="s").document["decision"] == "allow"
    with pytest.raises(RequestError):  # replay of the same signed reset: seq moved on
        enc.reset(session_id=known(enc, "s"), actor="op", reason="r", signature=good)
    entries = exported(enc, "s")
    reset = [e for e in entries if e["kind"] == "reset"]
    assert len(reset) == 1 and reset[0]["data"]["cleared"]["tags"] == ["phi"]
    assert verify_chain(entries, enc.public_key).ok


def test_complete_is_audited_and_only_for_allowed_calls(enc: Enclave) -> None:
    res = decide(enc, "web.search", {"query": "x"}, session="s")
    denied = decide(enc, "shell.exec", session="s")
    h = enc.complete(session_id=known(enc, "s"), call_id=res.document["call_id"],
                     response_digest="sha256:ab", response_bytes=10, error_code="", is_error=False)
    assert h == enc.sessions[known(enc, "s")].tip
    for call_id in (res.document["call_id"], denied.document["call_id"], "never"):
        with pytest.raises(RequestError):
            enc.complete(session_id=known(enc, "s"), call_id=call_id, response_digest="sha256:ab",
                         response_bytes=1, error_code="", is_error=False)


def test_queued_outcomes_are_recorded_before_anything_reads_or_extends_the_chain(enc: Enclave) -> None:
    """DecideStream queues carried outcomes to record after its reply; no entry point may see the
    enclave without them (here: a close right behind the queue), and a refused one is reported."""
    first = decide(enc, "web.search", {"query": "x"}, session="q")
    refused: list[Code] = []
    enc.on_refused_outcome = refused.append
    enc.complete_later([
        UpstreamOutcome(known(enc, "q"), first.document["call_id"], "sha256:" + "a" * 64, 10, "", False),
        UpstreamOutcome(known(enc, "q"), "never-decided", "sha256:" + "b" * 64, 10, "", False),
    ])
    done = enc.close(known(enc, "q"), "done")
    kinds = [e["kind"] for e in exported(enc, "q")]
    assert kinds == ["open", "decision", "complete", "close"]
    assert refused == [Code.MCP_INVALID_REQUEST]
    assert verify_chain(exported(enc, "q"), enc.public_key, expected_tip=done.tip).ok


# --- enclave-minted ids, no audit ring, the ledger -------------------------------------------

def test_session_ids_are_minted_by_the_enclave_and_never_reused(tmp_path: Path) -> None:
    """Attacker: a caller names its own id, replays a closed one, and one forgotten long ago."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(closed_kept=1))
    chosen = "attacker-chosen-session"
    with pytest.raises(RequestError) as err:
        enc.decide(session_id=chosen, call_id="c", principal="agent-a", method="tools/call",
                   tool="web.search", arguments_json=b"{}", arguments_digest=json_digest({}),
                   audience=DEFAULT_AUDIENCE)
    assert err.value.code == Code.SESSION_UNKNOWN and chosen not in enc.sessions
    with pytest.raises(RequestError) as err:
        enc.list_tools(session_id=chosen, principal="agent-a")
    assert err.value.code == Code.SESSION_UNKNOWN
    first = enc.open_session("agent-a", trail=NO_TRAIL)
    assert session_ids.owned_by(first, enc.kid)
    decide(enc, "web.search", {"query": "x"}, session=first)
    enc.close(first)
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session=first)
    assert err.value.code == Code.SESSION_CLOSED  # remembered
    enc.close(enc.open_session("agent-a", trail=NO_TRAIL))  # pushes `first` out of the closed_kept=1 memory
    assert first not in enc.closed
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session=first)
    assert err.value.code == Code.SESSION_UNKNOWN  # forgotten, and still never reopened
    with pytest.raises(RequestError):
        enc.close(first)  # so no second Trust Record for its subject


def test_weakened_enclave_that_creates_named_sessions_lets_an_id_be_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches the hole: with implicit creation (the old enclave), a forgotten id
    is opened and closed again, and two different Trust Records name one subject."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(closed_kept=1))
    honest = Enclave._session

    def creating(self: Enclave, session_id: str, principal: str) -> PolicySession:
        if session_id not in self.sessions and session_id not in self.closed:
            self.sessions[session_id] = PolicySession(session_id=session_id, principal=principal or "x",
                                                      last_used=self.clock())
        return honest(self, session_id, principal)

    monkeypatch.setattr(Enclave, "_session", creating)
    decide(enc, "web.search", {"query": "x"}, session="reused-id")
    one = enc.close("reused-id").record
    enc.close(enc.open_session("agent-a", trail=NO_TRAIL))
    decide(enc, "web.search", {"query": "y"}, session="reused-id")
    two = enc.close("reused-id").record
    assert one["subject"] == two["subject"] and one != two  # the fork the enclave must prevent


def test_no_entry_stays_in_the_enclave_and_10k_decisions_lose_nothing(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    session = sid(enc, "long")
    for i in range(10_000):
        decide(enc, "web.search", {"query": str(i)}, session="long")
        if i % 500 == 0:
            drained(enc)  # the answers leave in between, as over gRPC
    done = enc.close(session)
    entries = exported(enc, "long")
    assert len(entries) == 10_002 and len(enc.outbox) == 0
    assert verify_chain(entries, enc.public_key, expected_tip=done.tip).ok
    assert not hasattr(enc.sessions.get(session), "audit")  # nothing kept per session but the tip


def test_memory_per_open_session_is_under_2_kib(tmp_path: Path) -> None:
    """Measured, not guessed: 10,000 open sessions, each with one allowed call awaiting its outcome
    (the principals' own state, 100 sessions each, is counted in too)."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(max_sessions=20_000))
    sessions = 10_000
    decide(enc, "web.search", {"query": "warm"}, session="warm-up")
    carried(enc)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(sessions):
            principal = f"agent-{i // 100:04d}"  # 100 sessions per agent, under the bundle's call budget
            session = enc.open_session(principal, trail=NO_TRAIL)
            enc.decide(session_id=session, call_id=f"call-{i:08d}-{'x' * 20}", principal=principal,
                       method="tools/call", tool="web.search", arguments_json=b'{"query":"q"}',
                       arguments_digest=json_digest({"query": "q"}), audience=DEFAULT_AUDIENCE)
            carried(enc)  # the answer carried the entries away
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - base) / sessions
    finally:
        tracemalloc.stop()
    assert all(s.pending for s in enc.sessions.values() if s.session_id != sid(enc, "warm-up"))
    assert per_session < 2048, f"{per_session:.0f} bytes per open session"


def test_a_full_outbox_opens_no_session_and_closes_no_idle_one(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path,
                            limits=EnclaveLimits(outbox_bytes=1_500, idle_timeout=1))
    clock = FakeClock()
    enc.clock = clock
    idle = enc.open_session("agent-a", trail=NO_TRAIL)
    decide(enc, "web.search", {"query": "x"}, session=idle)  # not drained: the outbox fills
    assert enc.outbox.full
    with pytest.raises(RequestError) as err:
        enc.open_session("agent-a", trail=NO_TRAIL)
    assert err.value.code == Code.AUDIT_OUTBOX_FULL
    clock.now += 10
    assert enc.expire_idle() == [] and idle in enc.sessions  # its close entry would not fit either
    drained(enc)
    assert enc.expire_idle() == [idle]
    assert session_ids.owned_by(enc.open_session("agent-a", trail=NO_TRAIL), enc.kid)


def test_the_ledger_chains_every_open_and_close(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path)
    a, b = sid(enc, "a"), sid(enc, "b", "agent-b")
    decide(enc, "web.search", {"query": "x"}, session="a")
    done = enc.close(a)
    ledger = exported(enc, enc.ledger_id)
    assert verify_chain(ledger, enc.public_key, expected_tip=enc.ledger_tip).ok
    # each principal's first session is preceded by what the enclave took it over from (nothing)
    assert [(e["kind"], e["data"].get("session_id", e["data"].get("principal"))) for e in ledger] == [
        ("adopt", "agent-a"), ("open", a), ("adopt", "agent-b"), ("open", b), ("close", a)]
    assert ledger[0]["data"]["entries"] == 0 and ledger[0]["data"]["newest"] is None
    assert ledger[3]["data"]["principal"] == "agent-b"
    assert ledger[4]["data"]["tip"] == done.tip and ledger[4]["data"]["entries"] == done.entries == 3
    assert record_ledger(done.record) == (enc.ledger_id, 5, ledger[4]["hash"])
