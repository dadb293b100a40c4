"""``like "*…"`` over arguments is found wherever it hides in a condition, and only there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.policy_lint import lint_bundle
from tests.paths import EXAMPLES

HEAD = 'forbid (principal, action == cMCP::Action::"call_tool", resource)'


def _lint(tmp_path: Path, body: str, clause: str = "when") -> list[tuple[str, str, str]]:
    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    (bundle / "policies" / "probe.cedar").write_text(f'@id("probe")\n{HEAD}\n{clause} {{ {body} }};\n')
    return [(w.file, w.policy_id, w.message) for w in lint_bundle(load_bundle(bundle))]


@pytest.mark.parametrize("bundle", ["minimal", "realistic", "advisory"])
def test_shipped_examples_have_no_warnings(bundle: str) -> None:
    assert lint_bundle(load_bundle(EXAMPLES / bundle)) == []


HIDDEN = [
    'context.arguments has to && context.arguments.to like "*@partner.example"',
    '!(context.arguments has to && context.arguments.to like "*@partner.example")',
    'if context.arguments has to then context.arguments.to like "*@partner.example" else false',
    'true || (context.arguments has to &&\n  // a comment\n'
    '  context.arguments.to\n   like   "*@partner.example")',
    'context.arguments has to && context["arguments"]["to"] like "*@partner.example"',
]


@pytest.mark.parametrize("body", HIDDEN)
@pytest.mark.parametrize("clause", ["when", "unless"])
def test_suffix_pattern_over_an_argument_is_named_with_file_id_and_pattern(
        tmp_path: Path, body: str, clause: str) -> None:
    [(file, policy_id, message)] = _lint(tmp_path, body, clause)
    assert (file, policy_id) == ("policies/probe.cedar", "probe")
    assert '`context.arguments.to like "*@partner.example"`' in message
    assert "docs/policy-authoring.md" in message


def test_every_pattern_in_a_policy_is_reported(tmp_path: Path) -> None:
    body = ('context.arguments has to && context.arguments has body && '
            '(context.arguments.to like "*@x.example" || context.arguments.body like "*secret*")')
    messages = [m for _, _, m in _lint(tmp_path, body)]
    assert len(messages) == 2
    assert any('context.arguments.body like "*secret*"' in m for m in messages)


@pytest.mark.parametrize("body", [
    'context.arguments has to && context.arguments.to like "bob@*"',          # no leading wildcard
    'context.arguments has to && context.arguments.to like "\\*x"',           # escaped: a literal star
    'resource.name like "*.send_external"',                                   # not an argument
    'context.previous_tool like "*mail*"',                                    # session state
    'context.arguments has to && ["a@partner.example"].containsAll(context.arguments.to)',
])
def test_exact_comparisons_and_non_argument_patterns_are_not_warned(tmp_path: Path, body: str) -> None:
    assert _lint(tmp_path, body) == []


def test_escaped_characters_are_rendered_as_cedar_source(tmp_path: Path) -> None:
    [(_, _, message)] = _lint(tmp_path, 'context.arguments has to && context.arguments.to like "*\\*\\"x"')
    assert '`context.arguments.to like "*\\*\\"x"`' in message
