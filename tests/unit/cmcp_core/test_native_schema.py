"""``cmcp_core.native_schema``: the Cedar schema text of the native request model."""

from __future__ import annotations

import pytest

from cmcp_core.native_schema import native_schema

cedarpy = pytest.importorskip("cedarpy")


def test_arguments_and_comment_are_rendered() -> None:
    text = native_schema({"path": "String", "limit": "Long"}, comment="files tool")
    assert text.startswith("// files tool\n")
    assert "    path?: String,\n" in text and "    limit?: Long,\n" in text
    assert not native_schema({}).startswith("//")


@pytest.mark.parametrize("arguments", [{}, {"path": "String", "limit": "Long", "tags": "Set<String>"}])
def test_schema_is_valid_cedar_and_a_policy_on_the_arguments_validates(arguments: dict[str, str]) -> None:
    schema = native_schema(arguments)
    policy = ('permit(principal, action == cMCP::Action::"call_tool", resource) '
              'when { context.call_count < 5 && resource.sensitivity_rank <= context.max_rank };')
    if "limit" in arguments:
        policy += ('\nforbid(principal, action, resource) when '
                   '{ context.arguments has limit && context.arguments.limit > 10 };')
    result = cedarpy.validate_policies(policy, schema)
    assert result.validation_passed, result.errors


def test_a_policy_on_an_undeclared_argument_fails_validation() -> None:
    schema = native_schema({"path": "String"})
    policy = 'forbid(principal, action, resource) when { context.arguments.limit > 10 };'
    assert not cedarpy.validate_policies(policy, schema).validation_passed
