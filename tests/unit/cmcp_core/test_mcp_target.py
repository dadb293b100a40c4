"""``cmcp_core.mcp_target``: parsing a ``tools/call`` target and digesting its arguments."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cmcp_core.digest import json_digest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import TOOLS_CALL, args_digest, tool_call_target


def test_method_name() -> None:
    assert TOOLS_CALL == "tools/call"


def test_target_with_arguments() -> None:
    assert tool_call_target({"name": "search", "arguments": {"q": "x"}}) == ("search", {"q": "x"})


@pytest.mark.parametrize("params", [{"name": "t"}, {"name": "t", "arguments": None}])
def test_absent_arguments_mean_empty(params: dict[str, Any]) -> None:
    assert tool_call_target(params) == ("t", {})


@pytest.mark.parametrize("params", [
    None, [], "tools", {"arguments": {}}, {"name": ""}, {"name": 3},
    {"name": "t", "arguments": []}, {"name": "t", "arguments": "x"},
])
def test_malformed_params_are_invalid_requests(params: Any) -> None:
    with pytest.raises(CmcpError) as info:
        tool_call_target(params)
    assert info.value.code is Code.MCP_INVALID_REQUEST


def test_digest_is_key_order_independent_and_equals_json_digest() -> None:
    a = args_digest({"a": 1, "b": [1, "x"]})
    assert a == args_digest({"b": [1, "x"], "a": 1})
    assert a == json_digest({"a": 1, "b": [1, "x"]})
    assert a.startswith("sha256:")
    assert a != args_digest({"a": 2, "b": [1, "x"]})


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**64])
def test_unrepresentable_numbers_are_refused(bad: Any) -> None:
    with pytest.raises(CmcpError) as info:
        args_digest({"n": bad})
    assert info.value.code is Code.MCP_INVALID_REQUEST
