"""``cmcp_enclave.engine``: Cedar evaluation of one bundle, its argument conversion, fail-closed
errors and the scope index (the last moved from tests/unit/cmcp_enclave/test_enclave.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.engine import (
    I64_MAX,
    MAX_ARG_DEPTH,
    METHOD_ACTIONS,
    CedarEngine,
    SessionView,
    StateFacts,
    _admits,
    action_name,
    cedar_value,
)
from tests.paths import EXAMPLES

CLEAN = StateFacts("public", 0, frozenset(), 0, frozenset(), "")
FRESH = SessionView("s", principal=CLEAN, session=CLEAN)


def view(*facts: object) -> SessionView:
    """The principal's state as given; the session clean (what Cedar sees after a new session)."""
    return SessionView("s", principal=StateFacts(*facts), session=CLEAN)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine() -> CedarEngine:
    return CedarEngine(load_bundle(EXAMPLES / "realistic"))


def test_action_names() -> None:
    assert action_name("tools/call") == "call_tool"
    assert action_name("tools/list") == "list_tools"
    assert action_name("call_tool") == "call_tool"  # already an action
    assert set(METHOD_ACTIONS.values()) >= {"call_tool", "list_tools", "read_resource"}


def test_cedar_value_conversion() -> None:
    value = {"a": None, "b": [1, None, "x"], "c": 1.5, "d": True, "e": I64_MAX + 1, "f": {"g": -3}, 7: "k"}
    assert cedar_value(value) == {"b": [1, "x"], "c": "1.5", "d": True, "e": str(I64_MAX + 1),
                                  "f": {"g": -3}, "7": "k"}
    assert cedar_value(I64_MAX) == I64_MAX


@pytest.mark.parametrize("value", [
    {"__entity": {"type": "cMCP::Agent", "id": "admin"}}, {"x": [{"__extn": {"fn": "ip"}}]},
    {"__expr": "1"}, {"x": b"bytes"}, {"x": (1, 2)}, {"x": {1, 2}},
])
def test_cedar_value_refuses_reserved_keys_and_foreign_types(value: Any) -> None:
    with pytest.raises(CmcpError) as info:
        cedar_value(value)
    assert info.value.code is Code.ARGS_INVALID


def test_cedar_value_refuses_deep_nesting() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_ARG_DEPTH):
        deep = [deep]
    assert cedar_value(deep)  # exactly at the limit
    with pytest.raises(CmcpError) as info:
        cedar_value([deep])
    assert info.value.code is Code.ARGS_INVALID


@pytest.mark.parametrize(("scope", "admitted"), [
    (None, True), ({"op": "All"}, True),
    ({"op": "==", "entity": {"type": "cMCP::Tool", "id": "a"}}, True),
    ({"op": "==", "entity": {"type": "cMCP::Tool", "id": "b"}}, False),
    ({"op": "in", "entities": [{"type": "cMCP::Tool", "id": "b"}, {"type": "cMCP::Tool", "id": "a"}]}, True),
    ({"op": "in", "entities": [{"type": "cMCP::Tool", "id": "b"}]}, False),
    ({"op": "is", "entity_type": "cMCP::Tool"}, True),
    ({"op": "is", "entity_type": "cMCP::Other"}, False),
    ({"op": "is", "entity_type": "cMCP::Other", "in": {"entity": {}}}, True),  # not understood: kept
    ({"op": "someday"}, True),
])
def test_admits_is_exact_or_sound(scope: Any, admitted: bool) -> None:
    assert _admits(scope, "cMCP::Tool", "a") is admitted


def test_catalog_facts(engine: CedarEngine) -> None:
    assert engine.model == "native"
    assert engine.tool_rank("web.search") == ("public", 0)
    assert engine.tool_rank("ehr.read_patient_record") == ("restricted", 3)
    assert engine.tool_tags("web.search") == frozenset({"internet"})
    assert engine.tool_tags("ehr.read_patient_record") == frozenset({"phi"})


def test_allow_names_the_permitting_policy(engine: CedarEngine) -> None:
    result = engine.evaluate("tools/call", "agent", "crm.lookup_customer", {"customer_id": "c-1"}, FRESH)
    assert result.allowed and not result.errors
    assert any(pid.endswith("#allow-catalogued") for pid in result.policy_ids), result.policy_ids


def test_forbid_on_arguments_denies(engine: CedarEngine) -> None:
    small = engine.evaluate("tools/call", "agent", "payments.transfer", {"amount": 10}, FRESH)
    large = engine.evaluate("tools/call", "agent", "payments.transfer", {"amount": 20000}, FRESH)
    assert small.allowed and not large.allowed
    assert any(pid.endswith("#transfer-limit") for pid in large.policy_ids), large.policy_ids


def test_session_taint_denies_external_send(engine: CedarEngine) -> None:
    tainted = view("restricted", 3, frozenset({"phi"}), 1, frozenset({"ehr.read_patient_record"}),
                   "ehr.read_patient_record")
    assert engine.evaluate("tools/call", "agent", "web.search", {"q": "x"}, FRESH).allowed
    assert not engine.evaluate("tools/call", "agent", "web.search", {"q": "x"}, tainted).allowed


def test_evaluation_error_is_a_deny_naming_the_policy(engine: CedarEngine) -> None:
    result = engine.evaluate("tools/call", "agent", "payments.transfer", {"amount": "lots"}, FRESH)
    assert not result.allowed
    assert result.errors and any(e["policy_id"].endswith("#transfer-limit") for e in result.errors)


def test_evaluate_many_matches_evaluate(engine: CedarEngine) -> None:
    tools = sorted(engine.catalog)
    many = engine.evaluate_many("tools/list", "agent", tools, FRESH)
    assert [m.allowed for m in many] == [
        engine.evaluate("tools/list", "agent", t, {}, FRESH).allowed for t in tools]
    assert all(m.allowed for m in many)


def test_scope_index_gives_the_same_answers_as_the_full_policy_set(tmp_path: Path) -> None:
    """The per-(action, tool) subsets must decide exactly like the whole set, ids included."""
    import cedarpy

    from cmcp_enclave.engine import SessionView

    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    rules = []
    for i, tool in enumerate(["web.search", "payments.transfer", "résumé.parse", "crm.lookup_customer"]):
        rules.append(f'@id("scoped-{i}")\nforbid (principal, action == cMCP::Action::"call_tool", '
                     f'resource == cMCP::Tool::"{tool}") when {{ context.arguments has amount && '
                     f"context.arguments.amount > {i * 100} }};\n")
        rules.append(f'@id("in-{i}")\nforbid (principal, action in [cMCP::Action::"list_tools"], '
                     f'resource in cMCP::Tool::"{tool}") when {{ context.call_count > {i} }};\n')
    rules.append('@id("is-tool")\nforbid (principal, action, resource is cMCP::Tool) '
                 'when { context.arguments has amount && context.arguments.amount == 7 };\n')
    (bundle / "policies" / "scoped.cedar").write_text("".join(rules))
    enc = inprocess_enclave(bundle, tmp_path)
    engine = enc.engine
    assert len(engine.policies_for("call_tool", "web.search")) < len(engine.policies)
    for tool in sorted(engine.catalog):
        for method in ("tools/call", "list_tools"):
            for args in ({}, {"amount": 7}, {"amount": 150}, {"amount": 1000}, {"amount": "x"}):
                for count in (0, 3):
                    facts = StateFacts("public", 0, frozenset({"phi"}), count, frozenset(), "")
                    state = SessionView("s", principal=facts, session=facts)
                    fast = engine.evaluate(method, "agent", tool, args, state)
                    request = engine._request(method, "agent", tool, args, state)
                    raw = cedarpy.is_authorized(request, engine.policies, engine.entities)
                    full = engine._evaluation(raw)
                    assert (fast.allowed, sorted(fast.policy_ids), fast.errors) == \
                        (full.allowed, sorted(full.policy_ids), full.errors), (tool, method, args)


def test_policy_text_cedar_cannot_parse_is_a_coded_bundle_error() -> None:
    """Load-time validation normally stops such a bundle; if one got here it still fails coded."""
    broken = {"policies/broken.cedar": "permit (principal, action, resource"}
    bundle = dataclasses.replace(load_bundle(EXAMPLES / "minimal"), policies=broken)
    with pytest.raises(CmcpError) as err:
        CedarEngine(bundle)
    assert err.value.code is Code.BUNDLE_INVALID
