"""Warnings for policies that are valid Cedar but easy to walk around.

``like "*@partner.example"`` over an argument the agent writes matches a *suffix of free text*:
``"exfil@attacker.test, bob@partner.example"`` ends with it, and the mail goes to both. Cedar
has no string split, so such a rule cannot be made safe by a cleverer pattern; the argument
must have a shape the policy can compare exactly (a list of addresses and ``containsAll``,
see docs/policy-authoring.md). ``cmcpctl bundle validate`` reports these as warnings.

The policies are read through Cedar's own JSON form (``cedarpy.policies_to_json_str``), so a
pattern is found wherever it sits in a condition, however the source is spaced or commented.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import cedarpy

from cmcp_core.bundle import Bundle
from cmcp_core.validation import ValidationIssue, policy_names

ADVICE = ("a leading `*` matches a substring of free text the agent writes (\"x@attacker.test, "
          "y@partner.example\" ends with \"@partner.example\"); compare exact values instead "
          "(==, a set's contains / containsAll over a list argument), see docs/policy-authoring.md")


def lint_bundle(bundle: Bundle) -> list[ValidationIssue]:
    """Warnings for every policy file that parses; parse errors are validation's business."""
    warnings: list[ValidationIssue] = []
    for path, text in bundle.policies.items():
        try:
            names = policy_names(text)
            est: Any = json.loads(cedarpy.policies_to_json_str(text))
        except ValueError:
            continue
        static = est.get("staticPolicies", {}) if isinstance(est, dict) else {}
        for index, name in enumerate(names):
            policy = static.get(f"policy{index}", {}) if isinstance(static, dict) else {}
            for condition in policy.get("conditions", []) if isinstance(policy, dict) else []:
                for argument, pattern in argument_suffix_patterns(condition.get("body")):
                    warnings.append(ValidationIssue(
                        path, name, f"`{argument} like \"{pattern}\"`: {ADVICE}"))
    return warnings


def argument_suffix_patterns(expr: Any) -> Iterator[tuple[str, str]]:
    """``(argument expression, pattern)`` for each ``like`` in a Cedar JSON expression whose
    pattern starts with a wildcard and whose left side reads ``context.arguments``."""
    if isinstance(expr, dict):
        like = expr.get("like")
        if isinstance(like, dict):
            pattern = like.get("pattern")
            left = like.get("left")
            if isinstance(pattern, list) and pattern and pattern[0] == "Wildcard" \
                    and _reads_arguments(left):
                yield _render(left), _render_pattern(pattern)
        for value in expr.values():
            yield from argument_suffix_patterns(value)
    elif isinstance(expr, list):
        for item in expr:
            yield from argument_suffix_patterns(item)


def _reads_arguments(expr: Any) -> bool:
    """True when the expression contains ``context.arguments`` (``.`` on ``Var context``)."""
    if isinstance(expr, dict):
        dot = expr.get(".")
        if isinstance(dot, dict) and dot.get("attr") == "arguments" \
                and dot.get("left") == {"Var": "context"}:
            return True
        return any(_reads_arguments(value) for value in expr.values())
    if isinstance(expr, list):
        return any(_reads_arguments(item) for item in expr)
    return False


def _render(expr: Any) -> str:
    """A short source-like name for an attribute path (``context.arguments.to``)."""
    if isinstance(expr, dict):
        if "Var" in expr:
            return str(expr["Var"])
        dot = expr.get(".")
        if isinstance(dot, dict):
            return f"{_render(dot.get('left'))}.{dot.get('attr')}"
    return "<expression over context.arguments>"


def _render_pattern(pattern: list[Any]) -> str:
    """Cedar source text of a ``like`` pattern (``*`` wildcard, ``\\*`` literal star)."""
    escapes = {"*": "\\*", '"': '\\"', "\\": "\\\\", "\n": "\\n"}
    out: list[str] = []
    for part in pattern:
        if part == "Wildcard":
            out.append("*")
        elif isinstance(part, dict) and isinstance(char := part.get("Literal"), str):
            out.append(escapes.get(char) or char)
    return "".join(out)
