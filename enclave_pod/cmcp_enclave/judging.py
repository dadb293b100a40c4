"""The stateless half of a decision: checking a request and asking Cedar.

Nothing here reads or writes enclave state, so it may run anywhere the measured bundle is
loaded: inline on the event loop, or in a decision worker (:mod:`cmcp_enclave.workers`). The
state half (what Cedar sees, the signed document, the chain) stays in
:class:`cmcp_enclave.enclave.Enclave`. Problems with the *request* raise :class:`RequestError`
and never yield a decision; problems with the *call* are a :class:`Verdict` that the enclave
signs and audits as a deny.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import (
    CONTINUATION_FIELDS,
    INPUT_METHODS,
    LISTEN,
    STATEFUL_METHODS,
    TOOLS_CALL,
    bound_digest,
    listen_arguments,
)
from cmcp_core.validation import MAX_ARGUMENT_BYTES
from cmcp_enclave.engine import CedarEngine, SessionView

MAX_ID_LEN = 256
SUBSCRIBE = "resources/subscribe"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RequestError(CmcpError):
    """A request the enclave will not decide on; the server maps it to a gRPC status."""


@dataclass(frozen=True, slots=True)
class Call:
    """A decision request that passed :func:`admit`: what the signed decision names."""

    session_id: str
    call_id: str
    principal: str
    method: str
    tool: str
    arguments_digest: str
    audience: str
    input: dict[str, Any] | None = None  # a multi-round trip's answers, or an ask's input request

    @property
    def asking(self) -> str:
        """The method whose target this decision resolves: an ask's asking request's, else its own."""
        return str(self.input["asking"]) if self.method in INPUT_METHODS and self.input else self.method

    @property
    def answered(self) -> frozenset[str]:
        """The input requests (their keys) a repeated request answers."""
        if not self.input or self.method in INPUT_METHODS:
            return frozenset()
        responses = self.input.get("inputResponses")
        return frozenset(responses) if isinstance(responses, dict) else frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`judge` found: no reason is an allow. ``entry`` is the catalog entry
    ``(kind, name)`` the request acts on, once resolved (its taint is what an allow records)."""

    reason: Code | None
    policy_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    entry: tuple[str, str] | None = None


def check_id(name: str, value: str) -> None:
    if not value or len(value) > MAX_ID_LEN or _CONTROL.search(value):
        raise RequestError(Code.MCP_INVALID_REQUEST,
                           f"{name} must be 1..{MAX_ID_LEN} characters without control characters")


def admit(engine: CedarEngine, *, session_id: str, call_id: str, principal: str, method: str,
          tool: str, arguments_json: bytes, arguments_digest: str,
          audience: str, input_json: bytes = b"") -> tuple[Call, dict[str, Any]]:
    """The checks that need no state: ids, the tool's argument bound, JSON, the digest (of the
    arguments, and of the multi-round trip's ``input`` with them when there is one)."""
    check_id("session_id", session_id)
    check_id("call_id", call_id)
    check_id("principal", principal)
    check_id("method", method)
    check_id("tool", tool)
    limit = engine.argument_limit(tool) if method == TOOLS_CALL else MAX_ARGUMENT_BYTES
    if len(arguments_json) > limit:
        raise RequestError(Code.ARGS_TOO_LARGE,
                           f"arguments of {tool!r} exceed the bundle's bound of {limit} bytes")
    try:
        arguments: Any = json.loads(arguments_json) if arguments_json else {}
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(Code.ARGS_INVALID, "arguments_json is not JSON") from exc
    if not isinstance(arguments, dict):
        raise RequestError(Code.ARGS_INVALID, "arguments must be a JSON object")
    if method == LISTEN:
        try:
            listened = listen_arguments(arguments.get("notifications"))
        except CmcpError as exc:
            raise RequestError(Code.ARGS_INVALID, exc.detail) from exc
        if listened != arguments:
            raise RequestError(Code.ARGS_INVALID,
                               "a listen's arguments are its sorted resourceSubscriptions alone")
    given = _input(method, input_json) if input_json or method in INPUT_METHODS else None
    try:
        # == json_digest on the fast path
        digest = tagged_sha256(canonical(arguments)) if given is None else bound_digest(arguments, given)
    except Exception as exc:  # rfc8785 refuses NaN, huge ints, deep nesting
        raise RequestError(Code.ARGS_INVALID, f"arguments have no canonical form: {exc}") from exc
    if digest != arguments_digest:
        raise RequestError(Code.ARGS_DIGEST_MISMATCH, "arguments_digest is not sha256 of the JCS arguments")
    return Call(session_id, call_id, principal, method, tool, arguments_digest, audience, given), arguments


def _input(method: str, input_json: bytes) -> dict[str, Any]:
    """``input_json`` of a multi-round trip, checked for its shape: an ask names the stateful
    request that asked, the input request's key and params; a repeated request carries only
    ``inputResponses`` (an object) and ``requestState`` (a string)."""
    if len(input_json) > MAX_ARGUMENT_BYTES:
        raise RequestError(Code.ARGS_TOO_LARGE, f"input_json exceeds {MAX_ARGUMENT_BYTES} bytes")
    try:
        given: Any = json.loads(input_json) if input_json else None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(Code.ARGS_INVALID, "input_json is not JSON") from exc
    if not isinstance(given, dict) or not given:
        raise RequestError(Code.ARGS_INVALID, "input_json must be a non-empty JSON object")
    if method in INPUT_METHODS:
        if set(given) != {"asking", "key", "params"} or given["asking"] not in STATEFUL_METHODS \
                or not isinstance(given["key"], str) or not given["key"] \
                or not isinstance(given["params"], dict):
            raise RequestError(Code.ARGS_INVALID,
                               "an input request's input_json is {asking: a stateful method, key, params}")
    elif method not in STATEFUL_METHODS or not set(given) <= set(CONTINUATION_FIELDS) \
            or not isinstance(given.get("inputResponses", {}), dict) \
            or not isinstance(given.get("requestState", ""), str):
        raise RequestError(Code.ARGS_INVALID, f"{method} carries no input_json but inputResponses "
                           "and requestState of a tools/call, resources/read or prompts/get")
    return given


def judge(engine: CedarEngine, audience: str, call: Call, arguments: dict[str, Any],
          view: SessionView) -> Verdict:
    """Audience (the measured one), catalog, then Cedar on ``view``. A listen stream is judged
    as a subscription to each resource it follows: allowed only if every one is."""
    if call.audience != audience:
        return Verdict(Code.AUDIENCE_MISMATCH)
    if call.method == LISTEN:
        for uri in arguments["notifications"]["resourceSubscriptions"]:
            verdict = _judge_one(engine, SUBSCRIBE, SUBSCRIBE, call.principal, uri, {}, view)
            if verdict.reason is not None:
                return verdict
        return Verdict(None)
    return _judge_one(engine, call.asking, call.method, call.principal, call.tool, arguments, view)


def _judge_one(engine: CedarEngine, resolving: str, action: str, principal: str, name: str,
               arguments: dict[str, Any], view: SessionView) -> Verdict:
    """One target: the catalog entry ``resolving`` acts on, the scopes it needs, Cedar's
    ``action`` on it."""
    try:
        entry = engine.resolve(resolving, name, arguments)
    except CmcpError as exc:  # outside the catalog, or a method the request model does not decide
        return Verdict(exc.code)
    required = engine.required_scopes(entry[1], entry[0])
    if required:
        missing = required - (view.identity.scopes if view.identity is not None else frozenset())
        if missing:
            return Verdict(Code.INSUFFICIENT_SCOPE, errors=[{
                "policy_id": "", "message": f"the token lacks a scope the {entry[0]} requires",
                "scope": " ".join(sorted(required))}], entry=entry)
    try:
        result = engine.evaluate(action, principal, name, arguments, view, entry)
    except CmcpError as exc:
        return Verdict(exc.code, errors=[{"policy_id": "", "message": exc.detail}], entry=entry)
    if result.errors:
        return Verdict(Code.POLICY_EVAL_ERROR, result.policy_ids, result.errors, entry)
    return Verdict(None if result.allowed else Code.POLICY_DENY, result.policy_ids, result.errors, entry)
