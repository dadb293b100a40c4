"""``cmcp_core.mcp_target``: parsing a ``tools/call`` target and digesting its arguments."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cmcp_core.digest import json_digest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import (
    GATED_METHODS,
    LIST_METHODS,
    TOOLS_CALL,
    Target,
    args_digest,
    ask_target,
    bound_digest,
    call_target,
    forwarded_params,
    tool_call_target,
)


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


META = {"progressToken": 7}
REF = {"type": "ref/resource", "uri": "ehr://patients/{id}"}
ARGUMENT = {"name": "id", "value": "p"}


@pytest.mark.parametrize(("method", "params", "target", "forwarded"), [
    ("tools/call", {"name": "t", "arguments": {"a": 1}, "_meta": META, "extra": "dropped"},
     Target("tools/call", "tool", "t", {"a": 1}), {"name": "t", "arguments": {"a": 1}, "_meta": META}),
    ("resources/read", {"uri": "ehr://patients/p-1", "_meta": META},
     Target("resources/read", "resource", "ehr://patients/p-1", {}),
     {"uri": "ehr://patients/p-1", "_meta": META}),
    ("resources/subscribe", {"uri": "docs://x"}, Target("resources/subscribe", "resource", "docs://x", {}),
     {"uri": "docs://x"}),
    ("prompts/get", {"name": "p", "arguments": {"who": "me"}},
     Target("prompts/get", "prompt", "p", {"who": "me"}), {"name": "p", "arguments": {"who": "me"}}),
    ("prompts/get", {"name": "p"}, Target("prompts/get", "prompt", "p", {}), {"name": "p", "arguments": {}}),
    ("completion/complete", {"ref": REF, "argument": ARGUMENT},
     Target("completion/complete", "resource", "ehr://patients/{id}", {"ref": REF, "argument": ARGUMENT}),
     {"ref": REF, "argument": ARGUMENT}),
    ("logging/setLevel", {"level": "debug"},
     Target("logging/setLevel", "server", "logging", {"level": "debug"}), {"level": "debug"}),
])
def test_each_gated_method_has_one_target_and_forwards_only_what_its_permit_binds(
    method: str, params: dict[str, Any], target: Target, forwarded: dict[str, Any]
) -> None:
    assert method in GATED_METHODS
    assert call_target(method, params) == target
    assert forwarded_params(target, params) == forwarded


@pytest.mark.parametrize(("method", "params"), [
    ("resources/read", {}), ("resources/read", {"uri": ""}), ("prompts/get", {"name": "p", "arguments": []}),
    ("completion/complete", {"ref": {"type": "ref/tool", "name": "t"}, "argument": {}}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"}}),
    ("logging/setLevel", {"level": 3}), ("resources/read", "not an object"),
])
def test_malformed_gated_requests_are_invalid(method: str, params: Any) -> None:
    with pytest.raises(CmcpError) as refused:
        call_target(method, params)
    assert refused.value.code is Code.MCP_INVALID_REQUEST


def test_list_methods_are_not_gated_and_unknown_methods_have_no_target() -> None:
    assert not GATED_METHODS & set(LIST_METHODS)
    with pytest.raises(CmcpError) as refused:
        call_target("sampling/createMessage", {})
    assert refused.value.code is Code.METHOD_NOT_FOUND


ANSWERS = {"inputResponses": {"q1": {"action": "accept", "content": {"email": "a@example.com"}}},
           "requestState": "opaque"}


@pytest.mark.parametrize("method", ["tools/call", "prompts/get"])
def test_a_repeated_request_binds_its_answers_and_forwards_them(method: str) -> None:
    params = {"name": "t", "arguments": {"q": "x"}, **ANSWERS, "_meta": {"progressToken": 1}}
    target = call_target(method, params)
    assert target.input == ANSWERS
    assert target.digest == bound_digest({"q": "x"}, ANSWERS) != args_digest({"q": "x"})
    assert forwarded_params(target, params) == params  # nothing dropped, nothing the permit does not bind
    other = call_target(method, {**params, "requestState": "another"})
    assert other.digest != target.digest


def test_arguments_cannot_pose_as_arguments_with_answers() -> None:
    """Domain separation: a tool whose arguments look like ``{arguments, input}`` has another digest."""
    posing = call_target("tools/call", {"name": "t",
                                        "arguments": {"arguments": {"q": "x"}, "input": ANSWERS}})
    real = call_target("tools/call", {"name": "t", "arguments": {"q": "x"}, **ANSWERS})
    assert posing.digest != real.digest


@pytest.mark.parametrize("bad", [{"inputResponses": []}, {"requestState": 5}])
def test_malformed_answers_are_invalid(bad: dict[str, Any]) -> None:
    with pytest.raises(CmcpError) as refused:
        call_target("tools/call", {"name": "t", **bad})
    assert refused.value.code is Code.MCP_INVALID_REQUEST


def test_an_input_request_is_decided_on_what_its_asking_request_acts_on() -> None:
    asking = call_target("resources/read", {"uri": "ehr://patients/p-1"})
    ask = ask_target(asking, "q1", {"method": "elicitation/create", "params": {"message": "why?"}})
    assert (ask.method, ask.kind, ask.name) == ("elicitation/create", "resource", "ehr://patients/p-1")
    assert ask.input == {"asking": "resources/read", "key": "q1", "params": {"message": "why?"}}
    with pytest.raises(CmcpError) as refused:
        ask_target(asking, "q2", {"method": "tools/call", "params": {}})  # not a request to a client
    assert refused.value.code is Code.UPSTREAM_REQUEST_NOT_RELAYED
