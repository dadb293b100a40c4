"""Principal-scoped state: an agent cannot shed taint, sensitivity or budgets with a new session.

The attacker here is the agent itself, with no compromise at all: it reads PHI in one session and
sends the partner mail from a second one, a fresh MCP connection, or a stateless request (each a
new session id at the enclave). A weakened enclave that keeps state per session only shows the
attack then succeeds, so these tests are what hold the property.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.audit import reset_payload
from cmcp_core.errors import Code
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave import principals as principals_mod
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.judging import RequestError
from cmcp_enclave.principals import PrincipalTable
from cmcp_enclave.sessions import EnclaveLimits
from tests.helpers.enclave_calls import decide, exported, known
from tests.paths import EXAMPLES

MAIL = {"to": ["bob@partner.example"]}
TAINT_RULE = "policies/taint.cedar#no-external-send-after-phi"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _enclave(tmp_path: Path, *, window: int | None = None, limits: EnclaveLimits | None = None) -> Enclave:
    bundle = EXAMPLES / "realistic"
    if window is not None:
        bundle = tmp_path / "bundle"
        shutil.copytree(EXAMPLES / "realistic", bundle)
        manifest = (bundle / "manifest.json").read_text()
        declared = f'"state_window_seconds": {window}, "enforcement_mode"'
        (bundle / "manifest.json").write_text(manifest.replace('"enforcement_mode"', declared))
    enc = inprocess_enclave(bundle, tmp_path / "enc", limits=limits)
    clock = FakeClock()
    enc.clock = clock
    return enc


def _read_phi(enc: Enclave, session: str) -> None:
    assert decide(enc, "ehr.read_patient_record", {"patient_id": "p"}, session=session).document[
        "decision"] == "allow"


@pytest.mark.parametrize("second", ["new-session", "mcp-connection-2", "stateless-request-17"])
def test_taint_survives_any_new_session_of_the_principal(tmp_path: Path, second: str) -> None:
    enc = _enclave(tmp_path)
    _read_phi(enc, "s1")
    res = decide(enc, "email.send_external", MAIL, session=second)
    assert res.document["decision"] == "deny" and res.document["policy_ids"] == [TAINT_RULE]
    assert res.permit == ""
    assert decide(enc, "email.send_external", MAIL, session="s3", principal="someone-else").document[
        "decision"] == "allow"


def test_weakened_per_session_state_lets_the_agent_shed_taint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hole the principal table closes: with state per session only, the mail is sent."""
    enc = _enclave(tmp_path)
    monkeypatch.setattr(PrincipalTable, "get",
                        lambda self, principal, now: principals_mod.PrincipalState(principal=principal))
    _read_phi(enc, "s1")
    assert decide(enc, "email.send_external", MAIL, session="s2").document["decision"] == "allow"


def test_the_session_record_still_sees_only_its_own_calls(tmp_path: Path) -> None:
    enc = _enclave(tmp_path)
    _read_phi(enc, "s1")
    decide(enc, "slack.post_internal", {"channel": "c"}, session="s2")
    view = enc._view(enc.sessions[known(enc, "s2")], enc.principals.get("agent-a", enc.clock()))
    assert view.principal.tags >= {"phi"} and view.principal.call_count == 2
    assert view.session.tags == enc.engine.tool_tags("slack.post_internal") and "phi" not in view.session.tags
    assert view.session.call_count == 1 and view.session.tools_called == {"slack.post_internal"}


def test_taint_lasts_the_bundles_window_then_expires(tmp_path: Path) -> None:
    enc = _enclave(tmp_path, window=3600)
    clock = enc.clock
    assert isinstance(clock, FakeClock)
    _read_phi(enc, "s1")
    clock.now += 3599
    assert decide(enc, "email.send_external", MAIL, session="s2").document["decision"] == "deny"
    clock.now += 2  # one window after the PHI read
    assert decide(enc, "email.send_external", MAIL, session="s3").document["decision"] == "allow"


def test_call_count_is_a_budget_across_sessions(tmp_path: Path) -> None:
    enc = _enclave(tmp_path, window=3600)
    for i in range(5):
        decide(enc, "web.search", {"query": str(i)}, session=f"s{i}")
    held = enc.principals.get("agent-a", enc.clock()).view(enc.clock(), enc.principals.window)
    assert held.call_count == 5 and held.tools_called == {"web.search"}


def test_a_full_table_refuses_new_principals_and_never_drops_active_ones(tmp_path: Path) -> None:
    enc = _enclave(tmp_path, window=60, limits=EnclaveLimits(max_principals=2))
    _read_phi(enc, "a1")
    decide(enc, "web.search", {"query": "x"}, session="b1", principal="agent-b")
    with pytest.raises(RequestError) as err:
        decide(enc, "web.search", {"query": "x"}, session="c1", principal="agent-c")
    assert err.value.code is Code.PRINCIPAL_STATE_FULL
    assert decide(enc, "email.send_external", MAIL, session="a2").document["decision"] == "deny"
    clock = enc.clock
    assert isinstance(clock, FakeClock)
    clock.now += 61  # every fact has left the window: those principals may be forgotten
    assert decide(enc, "web.search", {"query": "x"}, session="c2", principal="agent-c").document[
        "decision"] == "allow"


def test_an_operator_reset_clears_the_principal_and_is_audited(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    enc = _enclave(tmp_path)
    enc.operator_keys = [key.public_key()]
    _read_phi(enc, "s1")
    seq = enc.sessions[known(enc, "s1")].seq
    payload = reset_payload(session_id=known(enc, "s1"), actor="oncall", reason="false positive", seq=seq)
    enc.reset(session_id=known(enc, "s1"), actor="oncall", reason="false positive",
              signature=key.sign(payload))
    entry = exported(enc, "s1")[-1]
    assert entry["kind"] == "reset" and entry["data"]["principal_cleared"]["principal"] == "agent-a"
    assert "phi" in entry["data"]["principal_cleared"]["tags"]
    assert decide(enc, "email.send_external", MAIL, session="s2").document["decision"] == "allow"
