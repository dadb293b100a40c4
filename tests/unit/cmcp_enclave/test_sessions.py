"""Session state inside the enclave: taint across calls, monotone sensitivity from the
measured catalog, call history, idle expiry, session bound, principal pinning, audited reset.
What a new session cannot shed (the principal's state) is in ``test_principals``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.audit import reset_payload, verify_chain
from cmcp_core.errors import Code
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.enclave import Enclave, UpstreamOutcome
from cmcp_enclave.judging import RequestError
from cmcp_enclave.sessions import EnclaveLimits
from tests.helpers.enclave_calls import decide
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
    session = enc.sessions["s"]
    assert enc.engine.levels[session.max_rank] == "restricted"
    assert session.tags == {"mnpi"} and session.call_count == 2
    assert session.tools_called == {"deals.read_pipeline", "slack.post_internal"}
    assert session.previous_tool == "slack.post_internal"
    # restricted data may not reach an internet tool
    res = decide(enc, "web.search", {"query": "q"}, session="s")
    assert "policies/taint.cedar#restricted-stays-inside" in res.document["policy_ids"]


def test_denied_calls_do_not_taint(enc: Enclave) -> None:
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="s", audience="urn:wrong")
    assert enc.sessions["s"].tags == set() and enc.sessions["s"].call_count == 0
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
    assert enc.expire_idle() == ["old"]
    assert set(enc.sessions) == {"young"}
    assert enc.closed["old"].record["policy"]["bundle_hash"] == enc.bundle_hash
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session="old")
    assert err.value.code == Code.SESSION_CLOSED
    entries = list(enc.export_audit("old", 0))
    assert entries[-1]["kind"] == "close" and entries[-1]["data"]["reason"] == "idle-timeout"
    assert verify_chain(entries, enc.public_key, expected_tip=enc.closed["old"].tip).ok


def test_max_sessions_is_enforced(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(max_sessions=2))
    decide(enc, "web.search", {"query": "x"}, session="a")
    decide(enc, "web.search", {"query": "x"}, session="b")
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session="c")
    assert err.value.code == Code.SESSION_LIMIT
    enc.close("a")
    assert decide(enc, "web.search", {"query": "x"}, session="c").document["decision"] == "allow"


def test_audit_ring_is_bounded_and_says_so(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, limits=EnclaveLimits(audit_ring=4))
    for _ in range(6):
        decide(enc, "web.search", {"query": "x"}, session="s")
    entries = list(enc.export_audit("s", 3))
    assert [e["seq"] for e in entries] == [3, 4, 5, 6]
    start = entries[0]
    assert verify_chain(entries, enc.public_key, start_prev=start["prev"], start_seq=3).ok
    with pytest.raises(RequestError) as err:
        list(enc.export_audit("s", 0))
    assert err.value.code == Code.AUDIT_TRUNCATED


def test_reset_needs_an_operator_signature_and_is_audited(tmp_path: Path) -> None:
    operator = Ed25519PrivateKey.generate()
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, operator_keys=[operator.public_key()])
    decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session="s")
    seq = enc.sessions["s"].seq
    forged = Ed25519PrivateKey.generate().sign(reset_payload(session_id="s", actor="op", reason="r", seq=seq))
    with pytest.raises(RequestError) as err:
        enc.reset(session_id="s", actor="op", reason="r", signature=forged)
    assert err.value.code == Code.RESET_UNAUTHORIZED
    good = operator.sign(reset_payload(session_id="s", actor="op", reason="r", seq=seq))
    enc.reset(session_id="s", actor="op", reason="r", signature=good)
    assert enc.sessions["s"].tags == set()
    assert decide(enc, "email.send_external", {"to": ["bob@partner.example"]},
                  session="s").document["decision"] == "allow"
    with pytest.raises(RequestError):  # replay of the same signed reset: seq moved on
        enc.reset(session_id="s", actor="op", reason="r", signature=good)
    entries = list(enc.export_audit("s", 0))
    reset = [e for e in entries if e["kind"] == "reset"]
    assert len(reset) == 1 and reset[0]["data"]["cleared"]["tags"] == ["phi"]
    assert verify_chain(entries, enc.public_key).ok


def test_complete_is_audited_and_only_for_allowed_calls(enc: Enclave) -> None:
    res = decide(enc, "web.search", {"query": "x"}, session="s")
    denied = decide(enc, "shell.exec", session="s")
    h = enc.complete(session_id="s", call_id=res.document["call_id"], response_digest="sha256:ab",
                     response_bytes=10, error_code="", is_error=False)
    assert h == enc.sessions["s"].tip
    for call_id in (res.document["call_id"], denied.document["call_id"], "never"):
        with pytest.raises(RequestError):
            enc.complete(session_id="s", call_id=call_id, response_digest="sha256:ab", response_bytes=1,
                         error_code="", is_error=False)


def test_session_memory_is_small(enc: Enclave) -> None:
    import sys

    decide(enc, "crm.lookup_customer", {"customer_id": "c"}, session="s")
    s = enc.sessions["s"]
    own = sum(sys.getsizeof(getattr(s, f)) for f in ("session_id", "principal", "tip", "tags",
                                                      "tools_called", "previous_tool", "pending"))
    assert sys.getsizeof(s) + own < 2048


def test_audit_memory_budget_forgets_closed_sessions_first(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path,
                            limits=EnclaveLimits(audit_ring=100, audit_budget_bytes=40_000))
    decide(enc, "web.search", {"query": "x"}, session="old")
    enc.close("old")
    assert "old" in enc.closed
    for _ in range(40):
        decide(enc, "web.search", {"query": "x"}, session="busy")
    assert enc.audit_bytes <= 40_000
    assert "old" not in enc.closed  # forgotten first
    assert enc.audit_bytes == sum(len(r) for r in enc.sessions["busy"].audit)
    first = enc.sessions["busy"].audit_first
    assert first > 0  # and then the oldest entries of the busy ring
    with pytest.raises(RequestError) as err:
        list(enc.export_audit("busy", 0))
    assert err.value.code == Code.AUDIT_TRUNCATED
    entries = list(enc.export_audit("busy", first))
    assert verify_chain(entries, enc.public_key, start_prev=entries[0]["prev"], start_seq=first).ok


def test_queued_outcomes_are_recorded_before_anything_reads_or_extends_the_chain(enc: Enclave) -> None:
    """DecideStream queues carried outcomes to record after its reply; no entry point may see the
    enclave without them (here: a close right behind the queue), and a refused one is reported."""
    first = decide(enc, "web.search", {"query": "x"}, session="q")
    refused: list[Code] = []
    enc.on_refused_outcome = refused.append
    enc.complete_later([
        UpstreamOutcome("q", first.document["call_id"], "sha256:" + "a" * 64, 10, "", False),
        UpstreamOutcome("q", "never-decided", "sha256:" + "b" * 64, 10, "", False),
    ])
    done = enc.close("q", "done")
    kinds = [e["kind"] for e in enc.export_audit("q", 0)]
    assert kinds == ["open", "decision", "complete", "close"]
    assert refused == [Code.MCP_INVALID_REQUEST]
    assert verify_chain(list(enc.export_audit("q", 0)), enc.public_key, expected_tip=done.tip).ok
