"""An upstream's input requests (MCP 2026-07-28 multi-round trips), decided by the enclave.

Each input request (``elicitation/create``, ``sampling/createMessage``, ``roots/list``) is a
signed, audited decision of its own action (``elicit``, ``sample``, ``list_roots``) on what the
asking request acts on, and gets no permit: nothing goes upstream on it. The repeated request
that carries the agent's answers is decided again, and only answers to input requests the enclave
let through in that session are accepted, once.

The attacker is a gateway (or an agent it fronts) that carries answers upstream to a question
the policy never let reach the agent, or replays an answer; a weakened enclave that skips the
check shows the tests would catch the hole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cmcp_core import permit as permits
from cmcp_core.decision import verify_decision
from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave import enclave as enclave_mod
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.judging import RequestError
from tests.helpers.enclave_calls import decide, drained, sid
from tests.paths import EXAMPLES

TOOL, ARGS = "web.search", {"query": "weather"}
ELICIT = {"method": "elicitation/create",
          "params": {"message": "Your email?", "requestedSchema": {"type": "object", "properties": {}}}}
ALLOW_ELICIT = ('@id("search-may-ask")\npermit (principal, action == cMCP::Action::"elicit", '
                'resource == cMCP::Tool::"web.search");\n')


def _enclave(tmp_path: Path, *policies: str) -> Enclave:
    bundle = tmp_path / "bundle"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    for index, text in enumerate(policies):
        (bundle / "policies" / f"input{index}.cedar").write_text(text)
    return inprocess_enclave(bundle, tmp_path / "enc")


@pytest.fixture
def enc(tmp_path: Path) -> Enclave:
    return _enclave(tmp_path, ALLOW_ELICIT)


def ask(enc: Enclave, key: str = "q1", request: dict[str, Any] | None = None, **kw: Any) -> Any:
    request = request or ELICIT
    return decide(enc, TOOL, ARGS, method=request["method"],
                  input={"asking": "tools/call", "key": key, "params": request["params"]}, **kw)


def answer(enc: Enclave, answers: dict[str, Any], **kw: Any) -> Any:
    return decide(enc, TOOL, ARGS, input={"inputResponses": answers, "requestState": "opaque"}, **kw)


ACCEPTED = {"action": "accept", "content": {"email": "a@example.com"}}


def test_an_allowed_input_request_is_signed_and_audited_and_gets_no_permit(enc: Enclave) -> None:
    res = ask(enc)
    assert res.document["effective"] == "allow" and res.permit == ""
    assert (res.document["method"], res.document["tool"]) == ("elicitation/create", TOOL)
    verify_decision(res.decision_json, res.signature, enc.public_key,
                    expected={"method": "elicitation/create"})
    chain = drained(enc)[sid(enc, "s1")]
    assert [e["data"]["method"] for e in chain.values() if e["kind"] == "decision"] == ["elicitation/create"]


def test_the_answer_goes_upstream_once_under_a_permit_that_binds_it(enc: Enclave) -> None:
    ask(enc)
    res = answer(enc, {"q1": ACCEPTED})
    assert res.document["effective"] == "allow", res.document
    permit, _, _ = permits.decode(res.permit)
    plain, _, _ = permits.decode(decide(enc, TOOL, ARGS).permit)
    assert permit.args == res.document["args_digest"] != plain.args  # the answers are bound too
    replayed = answer(enc, {"q1": ACCEPTED})  # the same answer again: the question was answered
    assert (replayed.document["effective"], replayed.document["reason_code"]) == ("deny", "INPUT_NOT_ASKED")


def test_an_answer_to_a_question_never_let_through_is_refused(enc: Enclave) -> None:
    res = answer(enc, {"forged": ACCEPTED})  # a gateway that invents the agent's answer
    assert (res.document["effective"], res.document["reason_code"]) == ("deny", "INPUT_NOT_ASKED")
    assert res.permit == ""
    ask(enc, "q1")
    partly = answer(enc, {"q1": ACCEPTED, "forged": ACCEPTED})  # one real answer does not carry a forged one
    assert partly.document["reason_code"] == "INPUT_NOT_ASKED"


def test_a_question_asked_in_another_session_or_for_another_tool_does_not_count(enc: Enclave) -> None:
    ask(enc, session="s1")
    assert answer(enc, {"q1": ACCEPTED}, session="s2").document["reason_code"] == "INPUT_NOT_ASKED"
    other = decide(enc, "docs.fetch", {"url": "https://x"}, input={"inputResponses": {"q1": ACCEPTED}})
    assert other.document["reason_code"] in ("INPUT_NOT_ASKED", "POLICY_DENY", "TOOL_NOT_IN_CATALOG")


def test_a_policy_that_does_not_permit_the_input_request_denies_it_and_its_answer(tmp_path: Path) -> None:
    enc = _enclave(tmp_path)  # the realistic bundle permits no elicit
    asked = ask(enc)
    assert (asked.document["effective"], asked.document["reason_code"]) == ("deny", "POLICY_DENY")
    assert answer(enc, {"q1": ACCEPTED}).document["reason_code"] == "INPUT_NOT_ASKED"


def test_each_input_method_is_its_own_action(enc: Enclave) -> None:
    sample = {"method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 5}}
    roots = {"method": "roots/list", "params": {}}
    assert ask(enc, "s", sample).document["reason_code"] == "POLICY_DENY"  # only elicit is permitted
    assert ask(enc, "r", roots).document["reason_code"] == "POLICY_DENY"
    assert ask(enc, "e").document["effective"] == "allow"


@pytest.mark.parametrize(("method", "given", "code"), [
    ("elicitation/create", {"asking": "tools/list", "key": "k", "params": {}}, Code.ARGS_INVALID),
    ("elicitation/create", {"asking": "tools/call", "key": "", "params": {}}, Code.ARGS_INVALID),
    ("elicitation/create", {"asking": "tools/call", "key": "k"}, Code.ARGS_INVALID),
    ("tools/call", {"inputResponses": [], "requestState": "s"}, Code.ARGS_INVALID),
    ("tools/call", {"inputResponses": {}, "extra": 1}, Code.ARGS_INVALID),
    ("resources/subscribe", {"requestState": "s"}, Code.ARGS_INVALID),
])
def test_malformed_input_is_refused_before_any_decision(enc: Enclave, method: str, given: dict[str, Any],
                                                         code: Code) -> None:
    with pytest.raises(RequestError) as refused:
        decide(enc, TOOL, ARGS, method=method, input=given)
    assert refused.value.code is code


def test_the_digest_must_cover_the_input(enc: Enclave) -> None:
    """Answers the digest does not cover are refused: the permit could not bind them."""
    ask(enc)
    with pytest.raises(RequestError) as refused:
        enc.decide(session_id=sid(enc, "s1"), call_id="mixed", principal="agent-a", method="tools/call",
                   tool=TOOL, arguments_json=json.dumps(ARGS).encode(),
                   arguments_digest=json_digest(ARGS), audience=enc.entry.audience,
                   input_json=json.dumps({"inputResponses": {"q1": ACCEPTED}}).encode())
    assert refused.value.code is Code.ARGS_DIGEST_MISMATCH


def test_weakened_enclave_that_skips_the_check_carries_a_forged_answer_upstream(
    enc: Enclave, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enclave_mod, "_was_asked", lambda session, call: True)
    res = answer(enc, {"forged": ACCEPTED})
    assert res.document["effective"] == "allow" and res.permit  # the hole the check closes
