"""What an MCP request acts on, and the digest of what it asks: the pair both ends bind.

The gateway asks the enclave about exactly this target and the guard checks the permit against
exactly this target, so both ends parse and digest requests with the same code. Every method in
:data:`GATED_METHODS` is decided by the enclave and needs a permit at the guard; the list
methods in :data:`LIST_METHODS` are filtered per principal by the enclave (the guard lets them
pass, as it lets the handshake).

Per method, the target and the arguments the permit's digest covers (``_meta`` is protocol
metadata, e.g. a progress token, and is relayed without being bound):

=======================  ==========  ===================  ===================================
method                   kind        name                 arguments
=======================  ==========  ===================  ===================================
tools/call               tool        ``name``             ``arguments``
resources/read           resource    ``uri``              ``{}``
resources/subscribe      resource    ``uri``              ``{}``
resources/unsubscribe    resource    ``uri``              ``{}``
prompts/get              prompt      ``name``             ``arguments``
completion/complete      prompt or   ``ref.name`` or      ``{"ref": ..., "argument": ...,
                         resource    ``ref.uri``          "context": ...}``
logging/setLevel         server      ``logging``          ``{"level": ...}``
subscriptions/listen     server      ``subscriptions``    ``{"notifications":
                                                          {"resourceSubscriptions": [...]}}``
=======================  ==========  ===================  ===================================

``subscriptions/listen`` (2026-07-28) opens a stream of update notifications for the resources it
names; the enclave decides ``subscribe_resource`` on each of them, and the permit binds the
list (sorted, without repeats; the gateway relays no list-change notifications, so the other
keys of the filter are not forwarded).

Multi-round trips (2026-07-28): an upstream that needs the agent's input answers a
``tools/call``, ``resources/read`` or ``prompts/get`` with an ``InputRequiredResult`` naming
requests to the client (:data:`INPUT_METHODS`); the agent answers by repeating the request with
``inputResponses`` and ``requestState``. Those two fields are the target's ``input``, and the
permit's digest binds them with the arguments (:attr:`Target.digest`), so no answer reaches the
upstream that the enclave did not decide. The enclave also decides each input request before the
agent sees it: that decision's target is the asking request's, with the input request as its
``input`` (:func:`ask_target`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code

TOOLS_CALL = "tools/call"
TOOL, RESOURCE, PROMPT, SERVER = "tool", "resource", "prompt", "server"
LOGGING = "logging"  # a ``server`` target: the upstream's log level
LISTEN = "subscriptions/listen"
SUBSCRIPTIONS = "subscriptions"  # the ``server`` target of a listen: the resources it follows
MAX_SUBSCRIPTIONS = 256  # resources one listen stream may follow
# list method -> (kind of its items, the result key that holds them, the item key that names one)
LIST_METHODS: Mapping[str, tuple[str, str, str]] = {
    "tools/list": (TOOL, "tools", "name"),
    "resources/list": (RESOURCE, "resources", "uri"),
    "resources/templates/list": (RESOURCE, "resourceTemplates", "uriTemplate"),
    "prompts/list": (PROMPT, "prompts", "name"),
}
# gated method -> the kind of its target (completion/complete: the kind its ``ref`` names)
METHOD_KINDS: Mapping[str, str] = {
    TOOLS_CALL: TOOL, "resources/read": RESOURCE, "resources/subscribe": RESOURCE,
    "resources/unsubscribe": RESOURCE, "prompts/get": PROMPT, "logging/setLevel": SERVER,
    LISTEN: SERVER,
}
GATED_METHODS = frozenset({*METHOD_KINDS, "completion/complete"})
# gated methods whose allowed requests make up a principal's state (taint, budgets): they hand
# the agent data. Subscriptions, completions and the log level carry none.
STATEFUL_METHODS = frozenset({TOOLS_CALL, "resources/read", "prompts/get"})
# requests an upstream may put to the client inside an InputRequiredResult (2026-07-28)
INPUT_METHODS = frozenset({"sampling/createMessage", "elicitation/create", "roots/list"})
# the fields of a repeated request that answer an InputRequiredResult (the SDK's MRTR carriers
# are exactly the stateful methods)
CONTINUATION_FIELDS = ("inputResponses", "requestState")
_COMPLETION_REFS = {"ref/prompt": (PROMPT, "name"), "ref/resource": (RESOURCE, "uri")}


@dataclass(frozen=True, slots=True)
class Target:
    """What one gated request acts on: the permit's ``method`` and ``tool`` (= ``name``) claims,
    and the arguments whose digest it carries."""

    method: str
    kind: str
    name: str
    arguments: dict[str, Any]
    input: dict[str, Any] | None = None  # a continuation's answers, or an ask's input request

    @property
    def digest(self) -> str:
        """What the permit's ``args_digest`` carries: the arguments' digest, or, with ``input``,
        a digest of both under its own domain (so no arguments can pose as arguments + input)."""
        if self.input is None:
            return args_digest(self.arguments)
        try:
            return bound_digest(self.arguments, self.input)
        except Exception as exc:  # rfc8785 raises its own types for NaN / out-of-range integers
            raise CmcpError(Code.MCP_INVALID_REQUEST, f"input cannot be canonicalised: {exc}") from exc


def call_target(method: str, params: Any) -> Target:
    """The target of a request to a gated ``method``; ``MCP_INVALID_REQUEST`` if malformed."""
    if not isinstance(params, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"{method} params must be an object")
    if method == TOOLS_CALL:
        name, arguments = tool_call_target(params)
        return Target(method, TOOL, name, arguments, continuation(params))
    if method == "resources/read":
        return Target(method, RESOURCE, _string(params, "uri", method), {}, continuation(params))
    if METHOD_KINDS.get(method) == RESOURCE:
        return Target(method, RESOURCE, _string(params, "uri", method), {})
    if method == "prompts/get":
        given = params.get("arguments")
        if given is not None and not isinstance(given, dict):
            raise CmcpError(Code.MCP_INVALID_REQUEST, "prompts/get arguments must be an object")
        return Target(method, PROMPT, _string(params, "name", method), given or {}, continuation(params))
    if method == "completion/complete":
        kind, name = completion_ref(params.get("ref"))
        argument = params.get("argument")
        if not isinstance(argument, dict):
            raise CmcpError(Code.MCP_INVALID_REQUEST, "completion/complete needs an argument object")
        arguments = {"ref": params["ref"], "argument": argument}
        if params.get("context") is not None:
            arguments["context"] = params["context"]
        return Target(method, kind, name, arguments)
    if method == "logging/setLevel":
        return Target(method, SERVER, LOGGING, {"level": _string(params, "level", method)})
    if method == LISTEN:
        return Target(method, SERVER, SUBSCRIPTIONS, listen_arguments(params.get("notifications")))
    raise CmcpError(Code.METHOD_NOT_FOUND, f"{method!r} is not a method the enclave decides")


def continuation(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``inputResponses`` / ``requestState`` a repeated request carries, or ``None``."""
    found = {k: params[k] for k in CONTINUATION_FIELDS if params.get(k) is not None}
    if not found:
        return None
    if not isinstance(found.get("inputResponses", {}), dict) or not isinstance(
            found.get("requestState", ""), str):
        raise CmcpError(Code.MCP_INVALID_REQUEST,
                        "inputResponses must be an object and requestState a string")
    return found


def listen_arguments(notifications: Any) -> dict[str, Any]:
    """What a listen stream is decided and permitted on: the resources it follows, sorted."""
    if not isinstance(notifications, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"{LISTEN} needs a notifications object")
    uris = notifications.get("resourceSubscriptions") or []
    if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "resourceSubscriptions must be a list of URIs")
    if len(uris) > MAX_SUBSCRIPTIONS:
        raise CmcpError(Code.MCP_INVALID_REQUEST,
                        f"a listen stream follows at most {MAX_SUBSCRIPTIONS} resources")
    return {"notifications": {"resourceSubscriptions": sorted(set(uris))}}


def ask_target(asking: Target, key: str, request: Any) -> Target:
    """The target the enclave decides before relaying one of ``asking``'s input requests
    (``request``, under ``key`` in the upstream's ``inputRequests``) to the agent: the input
    request's method, on what ``asking`` acts on, with the request as its ``input``."""
    method = request.get("method") if isinstance(request, dict) else None
    if method not in INPUT_METHODS:
        raise CmcpError(Code.UPSTREAM_REQUEST_NOT_RELAYED,
                        f"the upstream asked the client for {method!r}, which is not relayed")
    params = request.get("params")
    return Target(str(method), asking.kind, asking.name, asking.arguments,
                  {"asking": asking.method, "key": key, "params": params if isinstance(params, dict) else {}})


def completion_ref(ref: Any) -> tuple[str, str]:
    """``(kind, name)`` of a completion's ``ref``: a prompt by name or a resource by URI."""
    found = _COMPLETION_REFS.get(str(ref.get("type"))) if isinstance(ref, dict) else None
    if found is None:
        raise CmcpError(Code.MCP_INVALID_REQUEST,
                        "completion/complete needs a ref of type ref/prompt or ref/resource")
    kind, key = found
    return kind, _string(ref, key, "completion/complete")


def forwarded_params(target: Target, params: Mapping[str, Any]) -> dict[str, Any]:
    """The params the gateway sends upstream for ``target``: exactly what the permit binds, plus
    the agent's ``_meta`` (progress token and the like)."""
    if target.method in (TOOLS_CALL, "prompts/get"):
        out: dict[str, Any] = {"name": target.name, "arguments": target.arguments}
    elif target.kind == RESOURCE and target.method != "completion/complete":
        out = {"uri": target.name}
    else:  # completion/complete, logging/setLevel, subscriptions/listen: their arguments are their params
        out = dict(target.arguments)
    if target.input is not None:
        out.update(target.input)
    meta = params.get("_meta")
    if isinstance(meta, dict):
        out["_meta"] = meta
    return out


_INPUT_DOMAIN = b"cmcp-input-v1\0"


def _string(params: Mapping[str, Any], key: str, method: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"{method} needs a non-empty string {key!r}")
    return value


def tool_call_target(params: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(tool name, arguments)`` of a ``tools/call``; absent arguments mean ``{}``."""
    if not isinstance(params, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "tools/call params must be an object")
    name = params.get("name")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "tools/call needs a string name and object arguments")
    return name, arguments


def bound_digest(arguments: Mapping[str, Any], input: Mapping[str, Any]) -> str:
    """Digest of arguments and a multi-round trip's input together, under a domain of its own."""
    return tagged_sha256(_INPUT_DOMAIN + canonical({"arguments": dict(arguments), "input": dict(input)}))


def args_digest(arguments: Mapping[str, Any]) -> str:
    """Digest of the call's arguments (JCS, = ``json_digest``); unrepresentable numbers are refused."""
    try:
        return tagged_sha256(canonical(dict(arguments)))
    except Exception as exc:  # rfc8785 raises its own types for NaN / out-of-range integers
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"arguments cannot be canonicalised: {exc}") from exc
