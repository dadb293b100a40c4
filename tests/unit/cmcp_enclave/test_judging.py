"""The stateless half of a decision, on the realistic bundle: what it refuses and what it finds."""

from __future__ import annotations

import json

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_enclave.engine import CedarEngine, SessionView, StateFacts
from cmcp_enclave.judging import Call, RequestError, admit, check_id, judge
from tests.paths import EXAMPLES

AUDIENCE = "urn:cmcp:test"
NOTHING = StateFacts("public", 0, frozenset(), 0, frozenset(), "")
PHI_READ = StateFacts("restricted", 3, frozenset({"phi"}), 1, frozenset({"ehr.read_patient_record"}),
                      "ehr.read_patient_record")


@pytest.fixture(scope="module")
def engine() -> CedarEngine:
    return CedarEngine(load_bundle(EXAMPLES / "realistic"))


def _admit(engine: CedarEngine, tool: str, raw: bytes, digest: str) -> tuple[Call, dict[str, object]]:
    return admit(engine, session_id="s", call_id="c", principal="a", method="tools/call", tool=tool,
                 arguments_json=raw, arguments_digest=digest, audience=AUDIENCE)


def test_admit_returns_the_call_and_its_arguments(engine: CedarEngine) -> None:
    args = {"customer_id": "c-1"}
    call, arguments = _admit(engine, "crm.lookup_customer", json.dumps(args).encode(), json_digest(args))
    assert arguments == args
    assert (call.tool, call.arguments_digest) == ("crm.lookup_customer", json_digest(args))
    assert call.audience == AUDIENCE


@pytest.mark.parametrize(("raw", "digest", "code"), [
    (b"{not json", "sha256:00", Code.ARGS_INVALID),
    (b"[1]", json_digest([1]), Code.ARGS_INVALID),
    (b'{"a": 1}', json_digest({"a": 2}), Code.ARGS_DIGEST_MISMATCH),
    (b'{"a": ' + b"1" * (256 * 1024) + b"}", "sha256:00", Code.ARGS_TOO_LARGE),
])
def test_admit_refuses_what_cannot_be_decided(engine: CedarEngine, raw: bytes, digest: str,
                                              code: Code) -> None:
    with pytest.raises(RequestError) as refused:
        _admit(engine, "crm.lookup_customer", raw, digest)
    assert refused.value.code is code


@pytest.mark.parametrize("value", ["", "x" * 257, "a\nb", "a\x7fb"])
def test_ids_must_be_short_and_printable(value: str) -> None:
    with pytest.raises(RequestError) as refused:
        check_id("session_id", value)
    assert refused.value.code is Code.MCP_INVALID_REQUEST


def _call(tool: str, audience: str = AUDIENCE) -> Call:
    return Call("s", "c", "a", "tools/call", tool, "sha256:00", audience)


def test_judge_checks_audience_and_catalog_before_cedar(engine: CedarEngine) -> None:
    view = SessionView("s", principal=NOTHING, session=NOTHING)
    wrong_audience = _call("crm.lookup_customer", "urn:other")
    assert judge(engine, AUDIENCE, wrong_audience, {}, view).reason is Code.AUDIENCE_MISMATCH
    assert judge(engine, AUDIENCE, _call("not.catalogued"), {}, view).reason is Code.TOOL_NOT_IN_CATALOG


def test_judge_reads_the_principals_state_from_the_view(engine: CedarEngine) -> None:
    mail = {"to": ["bob@partner.example"]}
    clean = SessionView("s", principal=NOTHING, session=NOTHING)
    tainted = SessionView("s", principal=PHI_READ, session=NOTHING)
    assert judge(engine, AUDIENCE, _call("email.send_external"), mail, clean).reason is None
    denied = judge(engine, AUDIENCE, _call("email.send_external"), mail, tainted)
    assert denied.reason is Code.POLICY_DENY and denied.policy_ids
