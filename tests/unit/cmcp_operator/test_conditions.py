"""Status conditions (:mod:`cmcp_operator.conditions`): one entry per type, and a transition
time that moves only when the status does."""

from __future__ import annotations

import re

from cmcp_operator.conditions import Condition, get_condition, merge_conditions, now_rfc3339, transitions


def test_conditions_keep_transition_time_and_generation() -> None:
    first = merge_conditions(None, [Condition("Ready", False, "Waiting")], generation=1, now="T1")
    again = merge_conditions(first, [Condition("Ready", False, "Still")], generation=2, now="T2")
    assert again[0]["lastTransitionTime"] == "T1" and again[0]["observedGeneration"] == 2
    flipped = merge_conditions(again, [Condition("Ready", True, "Attested")], generation=2, now="T3")
    assert flipped[0]["lastTransitionTime"] == "T3" and flipped[0]["status"] == "True"
    assert [c["type"] for c in transitions(again, flipped)] == ["Ready"]
    assert transitions(flipped, flipped) == []


def test_status_text_is_the_api_convention() -> None:
    assert [Condition("X", s, "R").status_text for s in (True, False, None)] == ["True", "False", "Unknown"]


def test_unknown_types_are_kept_and_updates_replace_in_place() -> None:
    existing = [{"type": "Foreign", "status": "True", "reason": "TheirsNotOurs"},
                {"type": "Ready", "status": "False", "reason": "Old", "lastTransitionTime": "T0"},
                "not a condition"]
    merged = merge_conditions(existing, [Condition("Ready", None, "Probing", "checking"),
                                         Condition("Valid", True, "Parsed")], generation=None, now="T1")
    assert [c["type"] for c in merged] == ["Foreign", "Ready", "Valid"]
    assert merged[0] == existing[0]  # a type we do not own is left as it was
    ready = get_condition(merged, "Ready")
    assert ready == {"type": "Ready", "status": "Unknown", "reason": "Probing", "message": "checking",
                     "lastTransitionTime": "T1"}  # no generation given: no observedGeneration
    assert existing[1]["reason"] == "Old"  # the input list is not mutated


def test_same_status_without_a_transition_time_gets_one() -> None:
    merged = merge_conditions([{"type": "Ready", "status": "True"}], [Condition("Ready", True, "Ok")],
                              generation=3, now="T9")
    assert merged[0]["lastTransitionTime"] == "T9" and merged[0]["observedGeneration"] == 3


def test_long_messages_are_truncated_to_the_api_limit() -> None:
    merged = merge_conditions(None, [Condition("Degraded", True, "Many", "x" * 5000)], generation=1, now="T")
    assert len(merged[0]["message"]) == 1024


def test_transitions_include_new_types_and_ignore_unchanged() -> None:
    before = [{"type": "Ready", "status": "True"}, {"type": "Valid", "status": "True"}]
    after = [{"type": "Ready", "status": "True"}, {"type": "Valid", "status": "False"},
             {"type": "Attested", "status": "Unknown"}]
    assert [c["type"] for c in transitions(before, after)] == ["Valid", "Attested"]
    assert [c["type"] for c in transitions(None, after)] == ["Ready", "Valid", "Attested"]


def test_get_condition_tolerates_missing_and_malformed_lists() -> None:
    assert get_condition(None, "Ready") is None
    assert get_condition([{"type": "Valid"}, "junk"], "Ready") is None  # type: ignore[list-item]
    ready = {"type": "Ready", "status": "True"}
    assert get_condition([{"type": "Valid"}, ready], "Ready") == ready


def test_default_timestamp_is_rfc3339_utc_seconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_rfc3339())
    stamp = merge_conditions(None, [Condition("Ready", True, "Ok")], generation=None)[0]["lastTransitionTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
